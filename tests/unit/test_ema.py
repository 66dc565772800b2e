"""Tests of speechbrain_ssrl.ema."""

import pytest
import torch
from torch import nn

from speechbrain_ssrl.ema import LinearMomentum, ema_update_, make_teacher

torch.set_num_threads(1)


def _net(width=4):
    return nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 2))


def test_schedule_endpoints_monotone_clamp():
    sched = LinearMomentum(0.999, 0.9999, total_steps=100)
    assert sched(0) == pytest.approx(0.999)
    assert sched(50) == pytest.approx(0.99945)
    assert sched(100) == pytest.approx(0.9999)
    assert sched(10_000) == pytest.approx(0.9999)
    assert sched(-5) == pytest.approx(0.999)
    values = [sched(t) for t in range(120)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert LinearMomentum(0.98, 0.995, 10)(5) == pytest.approx(0.9875)


def test_schedule_counter_and_state(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    sched = LinearMomentum(0.9, 1.0, total_steps=10)
    assert [round(sched.advance(), 6) for _ in range(3)] == [0.9, 0.91, 0.92]
    assert sched.step == 3
    Checkpointer(tmp_path, {"m": sched}).save_checkpoint()
    other = LinearMomentum(0.5, 0.6)
    Checkpointer(tmp_path, {"m": other}).recover_if_possible()
    assert (other.start, other.end, other.total_steps, other.step) == (0.9, 1.0, 10, 3)
    assert other.advance() == pytest.approx(0.93)
    with pytest.raises(ValueError):
        LinearMomentum(0.9, 1.0)(0)  # total_steps not set
    with pytest.raises(ValueError):
        LinearMomentum(1.5, 1.0, 10)


def test_make_teacher():
    student = _net()
    teacher = make_teacher(student)
    assert not teacher.training and student.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for (n, a), (_, b) in zip(teacher.state_dict().items(), student.state_dict().items()):
        assert torch.equal(a, b), n
    assert teacher[0].weight.data_ptr() != student[0].weight.data_ptr()


def test_make_teacher_weight_norm():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy weight_norm is deprecated
        legacy = nn.utils.weight_norm(nn.Linear(3, 4))
    out = legacy(torch.randn(2, 3))  # caches a non-leaf ``weight`` attribute
    teacher = make_teacher(legacy)
    assert torch.allclose(teacher(torch.ones(1, 3)), legacy(torch.ones(1, 3)))
    assert legacy.weight.grad_fn is not None  # the student's graph is intact
    out.sum().backward()
    param = nn.utils.parametrizations.weight_norm(nn.Linear(3, 4))
    param(torch.randn(2, 3))
    teacher = make_teacher(param)
    ema_update_(teacher, param, 0.5)
    assert torch.allclose(teacher(torch.ones(1, 3)), param(torch.ones(1, 3)))


def test_wrapped_submodule_names_match():
    student = nn.ModuleDict({"enc": _net(), "clf": nn.Linear(2, 3)})
    teacher = make_teacher(student)
    with torch.no_grad():
        student["clf"].weight.add_(1.0)
    wrapped = nn.ModuleDict({"enc": nn.DataParallel(student["enc"]), "clf": student["clf"]})
    ema_update_(teacher, wrapped, 0.0)
    assert torch.equal(teacher["clf"].weight, student["clf"].weight)


def _train_bn(student):
    student.train()
    student(torch.randn(16, 3))  # moves running stats and num_batches_tracked


def test_update_math_parameters_and_buffers():
    torch.manual_seed(0)
    student = _net()
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    _train_bn(student)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    s0 = {k: v.clone() for k, v in student.state_dict().items()}
    m = 0.9
    ema_update_(teacher, student, m)
    for k, v in teacher.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, m * t0[k] + (1 - m) * s0[k], atol=1e-6), k
        else:
            assert torch.equal(v, s0[k]), k  # num_batches_tracked copied
    assert int(teacher[1].num_batches_tracked) == 1
    # the student is untouched
    for k, v in student.state_dict().items():
        assert torch.equal(v, s0[k])


def test_update_buffer_modes():
    torch.manual_seed(0)
    student = _net()
    _train_bn(student)
    for mode, expect in (("copy", "student"), ("none", "teacher")):
        teacher = _net()
        t0 = {k: v.clone() for k, v in teacher.named_buffers()}
        ema_update_(teacher, student, 0.5, buffers=mode)
        for k, v in teacher.named_buffers():
            ref = dict(student.named_buffers())[k] if expect == "student" else t0[k]
            assert torch.equal(v, ref), (mode, k)
    with pytest.raises(ValueError):
        ema_update_(_net(), student, 0.5, buffers="avg")


def test_momentum_extremes_and_ddp_like_wrapper():
    student, teacher = _net(), _net()
    ema_update_(teacher, student, 1.0)
    assert not torch.equal(teacher[0].weight, student[0].weight)
    ema_update_(teacher, nn.DataParallel(student), 0.0)  # wrapped student is unwrapped
    assert torch.equal(teacher[0].weight, student[0].weight)
    with pytest.raises(ValueError):
        ema_update_(teacher, student, 1.1)


def test_shape_or_name_mismatch_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        ema_update_(_net(4), _net(5), 0.9)
    with pytest.raises(ValueError, match="missing in the teacher"):
        ema_update_(nn.Sequential(nn.Linear(3, 4)), nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), 0.9)
