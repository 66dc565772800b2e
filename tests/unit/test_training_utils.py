"""Crops and views, per-sample augmentation, schedules, BN re-estimation, history."""

import os

import numpy as np
import soundfile as sf
import torch

from speechbrain_ssrl.augment import RandomAugment
from speechbrain_ssrl.bn_recalibration import recalibrate_bn
from speechbrain_ssrl.data.views import CropSampler, multicrop_dataset, read_crop, student_teacher_dataset
from speechbrain_ssrl.history import History, plot_history
from speechbrain_ssrl.schedules import TwoSegmentCosine, WarmupCosine, cosine

torch.set_num_threads(1)


def _write_corpus(tmp_path, lengths):
    rows = ["ID,duration,wav,start,stop,spk_id"]
    for i, n in enumerate(lengths):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, (np.arange(n) % 1000 / 1000.0 * 0.5).astype("float32"), 16000, subtype="PCM_16")
        rows.append(f"u{i},{n / 16000:.4f},{path},0,{n},spk{i % 2}")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return str(csv_path)


def test_read_crop_lengths_and_tiling(tmp_path):
    csv_path = _write_corpus(tmp_path, [8000])
    rng = np.random.default_rng(0)
    long = read_crop(str(tmp_path / "u0.wav"), 0, 8000, 4000, rng)
    assert long.shape == (4000,)
    tiled = read_crop(str(tmp_path / "u0.wav"), 0, 8000, 20000, rng)
    assert tiled.shape == (20000,)
    assert os.path.exists(csv_path)


def test_crops_deterministic_per_epoch(tmp_path):
    csv_path = _write_corpus(tmp_path, [32000, 12000, 40000])
    sampler = CropSampler(seed=3)
    ds = student_teacher_dataset(csv_path, sampler, student_seconds=0.5, teacher_seconds=1.0)
    a = ds[1]
    b = ds[1]
    assert a["index"] == 1 and torch.equal(a["student_view"], b["student_view"])
    assert a["student_view"].shape == (8000,) and a["teacher_view"].shape == (16000,)
    sampler.set_epoch(1)
    c = ds[2]
    sampler.set_epoch(0)
    assert not torch.equal(ds[2]["teacher_view"], c["teacher_view"])
    mc = multicrop_dataset(csv_path, sampler, n_global=2, global_seconds=1.0, n_local=3, local_seconds=0.5)[0]
    assert mc["global_views"].shape == (2, 16000) and mc["local_views"].shape == (3, 8000)


def test_random_augment_per_sample():
    class AddOne(torch.nn.Module):
        def forward(self, x, lengths):
            return x + 1

    torch.manual_seed(0)
    aug = RandomAugment([AddOne()], prob=0.5)
    x = torch.zeros(400, 10)
    y = aug(x)
    changed = (y[:, 0] == 1).float().mean()
    assert 0.4 < changed < 0.6
    assert torch.equal(RandomAugment([AddOne()], prob=0.0)(x), x)


def test_schedules():
    assert cosine(0, 10, 1.0, 0.0) == 1.0 and cosine(10, 10, 1.0, 0.0) == 0.0
    assert abs(cosine(5, 10, 1.0, 0.0) - 0.5) < 1e-9
    w = WarmupCosine(1.0, 0.01, warmup_steps=4, total_steps=20)
    assert w(0) == 0.25 and w(3) == 1.0 and abs(w(20) - 0.01) < 1e-12
    t = TwoSegmentCosine(fix_steps=10, total_steps=30, fix_start=1e-4, fix_end=1e-5, upd_start=5e-4, upd_end=1e-5)
    assert abs(t(0) - 1e-4) < 1e-12 and t(9) < 2e-5 and abs(t(10) - 5e-4) < 1e-12 and abs(t(30) - 1e-5) < 1e-12


def test_bn_recalibration_uses_clean_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    model.train()
    for _ in range(20):
        model(torch.randn(64, 3) * 10 + 5)  # "noisy" statistics
    before = model[1].running_var.clone()
    clean = [torch.randn(64, 3) for _ in range(10)]
    n = recalibrate_bn(model, model, clean)
    assert n == 10 and model.training  # mode restored
    assert model[1].momentum == 0.1
    assert (model[1].running_var < before).all()
    assert recalibrate_bn(model, model, []) == 0


def test_history_replaces_epoch_and_plots(tmp_path):
    h = History(str(tmp_path / "history.csv"))
    h.log({"epoch": 1, "loss": 2.0})
    h.log({"epoch": 2, "loss": 1.5, "eer": 30.0})
    h.log({"epoch": 2, "loss": 1.4, "eer": 29.0})
    rows = h.rows()
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[1]["loss"] == "1.4" and rows[0]["eer"] == ""
    files = plot_history(h.path, str(tmp_path / "plots"), {"loss": ["loss"], "eer": ["eer"]})
    assert len(files) == 2 and all(os.path.getsize(f) > 1000 for f in files)
    h.truncate(1)
    assert len(h.rows()) == 1


def test_plots_leave_no_matplotlib_debug_records(tmp_path, caplog):
    """SpeechBrain's log.txt takes DEBUG records: the plots must not fill it with matplotlib's font search."""
    import logging

    h = History(str(tmp_path / "history.csv"))
    h.log({"epoch": 1, "loss": 2.0})
    h.log({"epoch": 2, "loss": 1.0})
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("matplotlib").setLevel(logging.NOTSET)  # as a fresh process has it
        plot_history(h.path, str(tmp_path / "plots"))
    assert not [r for r in caplog.records if r.name.startswith("matplotlib")]


def test_random_eq_colours_spectrum_keeps_rms():
    from speechbrain_ssrl.augment import AugmentChain, RandomEQ

    torch.manual_seed(0)
    x = torch.randn(4, 16000)
    y = RandomEQ(max_gain_db=10)(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.allclose(y.pow(2).mean(-1), x.pow(2).mean(-1), rtol=1e-3)
    X, Y = torch.fft.rfft(x).abs(), torch.fft.rfft(y).abs()
    ratio = (Y[:, 100:7000] / X[:, 100:7000].clamp(min=1e-6)).log()
    assert ratio.std() > 0.1  # the spectrum was reshaped, not just rescaled
    chain = AugmentChain([RandomAugment([RandomEQ()], prob=1.0), RandomAugment([RandomEQ()], prob=0.0)])
    assert chain(x).shape == x.shape


def test_validates_after_every_n_epochs_the_last_and_never_with_zero():
    from types import SimpleNamespace

    from speechbrain_ssrl.brains.base import SSLBrainBase

    def epochs(every):
        fake = SimpleNamespace(hparams=SimpleNamespace(validate_every=every, number_of_epochs=7))
        return [e for e in range(8) if SSLBrainBase.validates_after(fake, e)]

    assert epochs(1) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert epochs(3) == [0, 3, 6, 7]  # 0: the start's row (SSRL validates its starting teacher)
    assert epochs(0) == [] and epochs(None) == []
