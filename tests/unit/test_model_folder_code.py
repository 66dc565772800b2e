"""Issue 16: a model folder is code (hyperpyyaml runs ``!apply:``); our code adds no execution of it, and
a full disk during a checkpoint save is named as such."""

import os

import pytest
import torch
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

from speechbrain_ssrl.export import export_encoder, load_embed_fn, verify_export

torch.set_num_threads(1)
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture()
def planted(tmp_path):
    """An export whose hyperparams.yaml creates a folder under ``marks/`` each time it is executed."""
    torch.manual_seed(0)
    model = ECAPA_TDNN(input_size=80, channels=[16, 16, 16, 16, 48], lin_neurons=8, attention_channels=8, se_channels=8)
    folder = export_encoder(model.eval(), str(tmp_path / "model"))
    marks = tmp_path / "marks"
    marks.mkdir()
    with open(os.path.join(folder, "hyperparams.yaml"), "a", encoding="utf-8") as f:
        f.write(f"\nplanted: !apply:tempfile.mkdtemp\n    dir: {marks}\n")
    return folder, marks


def test_our_code_never_executes_a_model_folders_yaml(planted, tmp_path):
    folder, marks = planted
    verify_export(folder)
    export_encoder(folder, str(tmp_path / "copy"))  # an export folder as the source
    assert len(os.listdir(marks)) == 0
    fn, _ = load_embed_fn(folder)  # EncoderClassifier.from_hparams: SpeechBrain's one execution
    assert len(os.listdir(marks)) == 1
    assert fn(torch.randn(2, 16000), torch.ones(2)).shape == (2, 8)


def test_full_disk_during_a_save_is_reported_as_such(tmp_path, monkeypatch):
    """torch's zip writer reports ENOSPC as "unexpected pos"; the message must say the disk is full."""
    import shutil
    from collections import namedtuple

    from speechbrain_ssrl import checkpoints
    from speechbrain_ssrl.checkpoints import AtomicCheckpointer, CheckpointSaveError

    model = torch.nn.Linear(2, 2)
    ckpt = AtomicCheckpointer(str(tmp_path / "save"), recoverables={"model": model})
    ckpt.save_checkpoint(meta={"x": 1})

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed ... unexpected pos 64 vs 0")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda p: usage(10 << 30, 10 << 30, 1 << 20))
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointSaveError, match=r"No space left on device \(1 MB free on"):
        ckpt.save_checkpoint(meta={"x": 2})
