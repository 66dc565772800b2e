"""AtomicCheckpointer (atomic saves / deletions, failed saves, stale folders, plain meta) and RNGState."""

import errno
import os
import random

import numpy as np
import pytest
import torch
import yaml
from speechbrain.utils.checkpoints import Checkpointer

from speechbrain_ssrl.checkpoints import AtomicCheckpointer, CheckpointSaveError, RNGState, plain_meta

torch.set_num_threads(1)


def _ckpt(tmp_path, **extra):
    model = torch.nn.Linear(3, 2)
    other = torch.nn.Linear(2, 2)
    ck = AtomicCheckpointer(tmp_path / "save", recoverables={"model": model, "other": other, **extra})
    return ck, model, other


def _entries(folder):
    return sorted(os.listdir(folder))


def test_save_is_complete_and_loads_like_speechbrain(tmp_path):
    ck, model, other = _ckpt(tmp_path)
    saved = ck.save_and_keep_only(meta={"eer": np.float64(3.5), "step": np.int64(7)})
    assert saved is None  # same contract as Checkpointer.save_and_keep_only
    (name,) = _entries(tmp_path / "save")
    assert name.startswith("CKPT+")
    files = set(os.listdir(tmp_path / "save" / name))
    assert files == {"CKPT.yaml", "model.ckpt", "other.ckpt"}
    with open(tmp_path / "save" / name / "CKPT.yaml") as f:
        meta = yaml.safe_load(f)  # SpeechBrain reads it with SafeLoader: numpy scalars were converted
    assert meta["eer"] == 3.5 and meta["step"] == 7 and type(meta["step"]) is int
    w = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    # a stock Checkpointer reads the folder too
    plain = Checkpointer(tmp_path / "save", recoverables={"model": model, "other": other})
    assert plain.recover_if_possible() is not None
    assert torch.equal(model.weight, w)


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ck, model, other = _ckpt(tmp_path)
    ck.save_and_keep_only(meta={"epoch": 1})
    (first,) = _entries(tmp_path / "save")
    w1 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)

    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj, f, *a, **kw):  # the second recoverable hits a full disk half-way
        calls["n"] += 1
        if calls["n"] == 2:
            with open(f, "wb") as fh:
                fh.write(b"\x00" * 10)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointSaveError) as ei:
        ck.save_and_keep_only(meta={"epoch": 2})
    monkeypatch.setattr(torch, "save", real_save)
    msg = str(ei.value)
    assert "No space left on device" in msg and "intact" in msg and first in msg and ".saving+" in msg
    assert isinstance(ei.value.__cause__, OSError)
    # nothing half-written is left, the previous checkpoint was neither deleted nor touched
    assert _entries(tmp_path / "save") == [first]
    with torch.no_grad():
        model.weight.zero_()
    ckpt = ck.recover_if_possible()
    assert ckpt.meta["epoch"] == 1 and torch.equal(model.weight, w1)


def test_interrupted_save_is_invisible_and_cleaned(tmp_path):
    ck, model, other = _ckpt(tmp_path)
    ck.save_and_keep_only(meta={"epoch": 1})
    (first,) = _entries(tmp_path / "save")
    # what a SIGKILL in the middle of a save leaves behind: a hidden folder with some of the files
    stale = tmp_path / "save" / ".saving+CKPT+2099-01-01+00-00-00+00+123"
    stale.mkdir()
    (stale / "CKPT.yaml").write_text("end-of-epoch: true\nunixtime: 4070908800.0\n")
    (stale / "model.ckpt").write_bytes(b"trunc")
    trash = tmp_path / "save" / ".deleting+CKPT+2000-01-01+00-00-00+00+9"
    trash.mkdir()
    assert [c.path.name for c in ck.list_checkpoints()] == [first]
    assert ck.recover_if_possible().meta["epoch"] == 1
    ck2, _, _ = _ckpt(tmp_path)  # a re-run cleans the leftovers at start
    assert _entries(tmp_path / "save") == [first]
    assert ck2.recover_if_possible().meta["epoch"] == 1


def test_keep_only_and_named_resave(tmp_path):
    ck, model, other = _ckpt(tmp_path)
    for e in range(3):
        ck.save_and_keep_only(meta={"epoch": e})
    assert len(ck.list_checkpoints()) == 1 and ck.find_checkpoint().meta["epoch"] == 2
    ck.save_checkpoint(name="best", meta={"v": 1})
    ck.save_checkpoint(name="best", meta={"v": 2})  # replaces the named folder atomically
    named = [c for c in ck.list_checkpoints() if c.path.name == "CKPT+best"]
    assert len(named) == 1 and named[0].meta["v"] == 2
    assert not [n for n in _entries(tmp_path / "save") if n.startswith(".")]


def test_plain_meta():
    out = plain_meta({"a": np.float32(1.5), "b": torch.tensor(2), "c": [np.int32(1)], "d": True, "e": None})
    assert out == {"a": 1.5, "b": 2, "c": [1], "d": True, "e": None}
    assert yaml.safe_load(yaml.dump(out)) == out
    with pytest.raises(TypeError, match="'x'"):
        plain_meta({"x": object()})


def _draws():
    return (random.random(), float(np.random.rand()), float(torch.rand(1)))


def test_rng_state_roundtrip_and_deferral(tmp_path):
    rng = RNGState()
    ck = AtomicCheckpointer(tmp_path / "save", recoverables={"rng_state": rng})
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    _draws()
    ck.save_checkpoint(end_of_epoch=False)
    expected = [_draws() for _ in range(3)]
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.recover_if_possible()
    assert rng.pending == "batch"
    assert rng.apply_pending("epoch") is False  # an intra-epoch state waits for the next batch
    torch.rand(5)  # e.g. a DataLoader iterator drawing its base seed before the batch
    assert rng.apply_pending("batch") is True and rng.pending is None
    assert [_draws() for _ in range(3)] == expected
    # end-of-epoch checkpoints are applied at the start of the next epoch
    ck.save_and_keep_only(end_of_epoch=True)
    expected = _draws()
    ck.recover_if_possible()
    assert rng.pending == "epoch" and rng.apply_pending("epoch")
    assert _draws() == expected


def test_rng_state_optional_for_old_checkpoints(tmp_path):
    model = torch.nn.Linear(2, 2)
    Checkpointer(tmp_path / "save", recoverables={"model": model}).save_checkpoint()
    ck = AtomicCheckpointer(tmp_path / "save", recoverables={"model": model, "rng_state": RNGState()})
    with pytest.warns(UserWarning, match="optional"):
        assert ck.recover_if_possible() is not None
