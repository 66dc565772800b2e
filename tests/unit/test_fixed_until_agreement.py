"""SSRLBrain's label-fixed phase ended by a measured teacher agreement (``fixed_until_agreement``)."""

from types import SimpleNamespace

import pytest
import torch

from speechbrain_ssrl.brains.ssrl import SSRLBrain
from speechbrain_ssrl.pseudo_labels import PseudoLabelState
from speechbrain_ssrl.schedules import TwoSegmentCosine

SPE, EPOCHS = 10, 8


def _brain(agreement=0.0, cap=None, e_fix=2):
    b = SSRLBrain.__new__(SSRLBrain)  # the phase logic only: no modules, no data
    b.hparams = SimpleNamespace(update_labels=True, fixed_label_epochs=e_fix, fixed_until_agreement=agreement,
                                fixed_label_max_epochs=cap, label_update_every=1, queue_length=5,
                                lr_fix_start=1e-3, lr_fix_end=1e-4, lr_start=2e-3, lr_final=1e-5,
                                update_warmup_epochs=0.0, number_of_epochs=EPOCHS)
    b.state = PseudoLabelState(torch.arange(20) % 4, 4, queue_length=5)
    b.steps_per_epoch = SPE
    b.build_lr_schedule()
    return b


def _records(b, agree):
    """ŷ equal to the labels for a fraction ``agree`` of the utterances."""
    idx = torch.arange(b.state.n)
    hat = b.state.labels.clone()
    n_off = int(round((1 - agree) * b.state.n))
    hat[:n_off] = (hat[:n_off] + 1) % 4
    return {"idx": idx, "hat": hat, "loss": torch.zeros(b.state.n)}


def test_release_rule_unchanged_when_off():
    b = _brain()
    assert not b.agreement_mode and b.fixed_end == 2
    assert [b.updates_labels_after(e) for e in (1, 2, 3)] == [False, True, True]
    assert [b.in_update_phase(e) for e in (2, 3)] == [False, True]
    ref = TwoSegmentCosine(2 * SPE, SPE * EPOCHS, 1e-3, 1e-4, 2e-3, 1e-5)
    assert all(b.lr_schedule(s) == ref(s) for s in range(SPE * EPOCHS))
    assert b.decide_fixed_end(2, _records(b, 0.1)) is None  # nothing measured or decided


def test_phase_ends_at_the_first_epoch_that_agrees():
    b = _brain(agreement=0.8)
    assert b.fixed_end is None
    assert b.decide_fixed_end(1, _records(b, 0.95)) is None  # before fixed_label_epochs: not measured
    assert b.decide_fixed_end(2, _records(b, 0.5)) == pytest.approx(0.5)
    assert b.fixed_end is None and not b.updates_labels_after(2) and not b.in_update_phase(3)
    assert b.lr_schedule(5 * SPE) == pytest.approx(1e-4)  # waits at lr_fix_end
    assert b.decide_fixed_end(3, _records(b, 0.9)) == pytest.approx(0.9)
    assert b.fixed_end == 3 and b.updates_labels_after(3) and b.in_update_phase(4) and not b.in_update_phase(3)
    assert b.lr_schedule(3 * SPE) == pytest.approx(2e-3)  # the update segment starts after epoch 3
    assert b.lr_schedule(SPE * EPOCHS) == pytest.approx(1e-5)
    assert b.decide_fixed_end(4, _records(b, 0.1)) is None  # decided once


def test_cap_ends_the_phase_and_no_cap_never_forces():
    b = _brain(agreement=0.99, cap=4)
    b.decide_fixed_end(3, _records(b, 0.2))
    assert b.fixed_end is None
    b.decide_fixed_end(4, _records(b, 0.2))
    assert b.fixed_end == 4
    c = _brain(agreement=0.99)
    for e in range(2, EPOCHS + 1):
        c.decide_fixed_end(e, _records(c, 0.2))
    assert c.fixed_end is None and not any(c.updates_labels_after(e) for e in range(1, EPOCHS + 1))


def test_decision_is_checkpointed():
    b = _brain(agreement=0.5)
    b.decide_fixed_end(2, _records(b, 0.9))
    state = b.state.state_dict()
    assert state["fixed_end_epoch"] == 2 and isinstance(state["fixed_end_epoch"], int)
    c = _brain(agreement=0.5)
    c.state.load_state_dict(state)
    assert c.fixed_end == 2
    old = dict(state)
    del old["fixed_end_epoch"]  # a checkpoint of an earlier version
    c.state.load_state_dict(old)
    assert c.state.fixed_end_epoch is None
