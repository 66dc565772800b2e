"""Refusals of recipe_checks, in-process (the subprocess versions are in tests/integration/test_reliability.py)."""

import json
import os

import pytest
import torch
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

from speechbrain_ssrl import recipe_checks as rc
from speechbrain_ssrl.export import ecapa_kwargs_of

torch.set_num_threads(1)
RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "VoxCeleb", "SSRL")
SSRL_YAML = os.path.join(RECIPE, "hparams", "minivox", "ssrl_ecapa.yaml")


def _tiny(channels=32):
    return ECAPA_TDNN(input_size=80, channels=[channels] * 4 + [3 * channels], lin_neurons=16, attention_channels=16)


def _csv(path, n, prefix="u"):
    rows = ["ID,duration,wav,start,stop,spk_id"] + [f"{prefix}{i},1.0,/x/{i}.wav,0,16000,s{i % 3}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _hparams(tmp_path, n=10, **kw):
    save = tmp_path / "save"
    save.mkdir(exist_ok=True)
    h = {"stage": "ssrl", "save_folder": str(save), "train_annotation": _csv(tmp_path / "train.csv", n),
         "K0": 4, "emb_dim": 16, "channels": [32, 32, 32, 32, 96], "queue_length": 5}
    h.update(kw)
    return h


def _fake_checkpoint(save_folder):
    os.makedirs(os.path.join(save_folder, "CKPT+x"), exist_ok=True)
    open(os.path.join(save_folder, "CKPT+x", "CKPT.yaml"), "w").write("end-of-epoch: true\n")


def test_unknown_command_line_key_is_refused_with_close_matches():
    rc.check_overrides(SSRL_YAML, "K0: 24\nchannels: [32,32,32,32,96]")
    with pytest.raises(rc.RefusedError) as ei:
        rc.check_overrides(SSRL_YAML, "K_0: 24\nnumber_of_epoch: 3")
    msg = str(ei.value)
    assert "--K_0" in msg and "'K0'" in msg and "--number_of_epoch" in msg and "'number_of_epochs'" in msg
    assert ei.value.code.startswith("train.py refused to start")  # SystemExit: printed, exit status 1
    # hyperpyyaml fails with a ruamel DuplicateKeyError traceback on a key given twice
    with pytest.raises(rc.RefusedError, match="--K0 is given 2 times"):
        rc.check_overrides(SSRL_YAML, "K0: 24\nemb_dim: 8\nK0: 12")


def test_load_hparams_refuses_unknown_keys_and_allows_new_nested_options(tmp_path):
    base = {"data_folder": str(tmp_path), "dino_folder": str(tmp_path), "channels": [8, 8, 8, 8, 24], "emb_dim": 8}
    with pytest.raises(rc.RefusedError, match="--K_0 is not a key.*'K0'"):
        rc.load_hparams(SSRL_YAML, {**base, "K_0": 4})
    h = rc.load_hparams(SSRL_YAML, {**base, "dataloader_options": {"pin_memory": False}})
    assert h["dataloader_options"]["pin_memory"] is False and h["dataloader_options"]["batch_size"] == 32


def test_k0_larger_than_n_is_refused(tmp_path):
    h = _hparams(tmp_path, n=10, K0=11)
    with pytest.raises(rc.RefusedError, match=r"K0=11 is larger than the number of training utterances N=10"):
        rc.check_training_data(h)
    assert not os.path.exists(os.path.join(h["save_folder"], rc.SETTINGS_FILE))
    rc.check_training_data(_hparams(tmp_path, n=10, K0=10))


def test_teacher_checks(tmp_path):
    model = _tiny()
    with pytest.raises(rc.RefusedError, match="no usable teacher"):
        rc.check_teacher({"stage": "ssrl", "dino_folder": str(tmp_path), "embedding_model": model})
    torch.save(_tiny(48).state_dict(), tmp_path / "embedding_model.ckpt")  # another architecture
    with pytest.raises(rc.RefusedError, match="different architecture"):
        rc.check_teacher({"stage": "ssrl", "dino_folder": str(tmp_path), "embedding_model": model})
    # an exported teacher (ecapa.json beside it): the refusal names the differing keys and the overrides that fit
    (tmp_path / "ecapa.json").write_text(json.dumps(ecapa_kwargs_of(_tiny(48))))
    with pytest.raises(rc.RefusedError) as e:
        rc.check_teacher({"stage": "ssrl", "dino_folder": str(tmp_path), "embedding_model": model})
    msg = str(e.value)
    assert "channels [48,48,48,48,144] (this yaml: [32,32,32,32,96])" in msg and "\n" not in msg
    assert "Fix: pass --channels=[48,48,48,48,144] to train from it" in msg and "attention_channels" not in msg
    (tmp_path / "ecapa.json").write_text(json.dumps(ecapa_kwargs_of(_tiny(32))))
    with pytest.raises(rc.RefusedError, match="check channels / emb_dim"):  # ecapa.json that names no difference
        rc.check_teacher({"stage": "ssrl", "dino_folder": str(tmp_path), "embedding_model": model})
    (tmp_path / "ecapa.json").unlink()
    (tmp_path / "embedding_model.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(rc.RefusedError, match="no usable teacher"):
        rc.check_teacher({"stage": "ssrl", "dino_folder": str(tmp_path), "embedding_model": model})
    torch.save(_tiny().state_dict(), tmp_path / "embedding_model.ckpt")
    w = model.state_dict()["blocks.0.conv.conv.weight"].clone()
    assert rc.check_teacher({"stage": "ssrl", "dino_folder": str(tmp_path), "embedding_model": model})
    assert torch.equal(model.state_dict()["blocks.0.conv.conv.weight"], w)  # the check loads into a copy
    assert rc.check_teacher({"stage": "dino", "embedding_model": model}) is None


def test_resume_with_changed_settings_is_refused(tmp_path):
    h = _hparams(tmp_path)
    saved = rc.check_training_data(h)  # fresh start: writes run_settings.json
    with open(os.path.join(h["save_folder"], rc.SETTINGS_FILE)) as f:
        assert json.load(f) == saved
    assert saved["N"] == 10 and saved["K0"] == 4 and saved["channels"] == [32, 32, 32, 32, 96]
    # without a checkpoint there is nothing to resume: other settings simply replace the file
    rc.check_before_start({**h, "K0": 5})
    rc.check_training_data(h)
    _fake_checkpoint(h["save_folder"])
    rc.check_before_start(h)
    rc.check_training_data(h)
    with pytest.raises(rc.RefusedError) as ei:
        rc.check_before_start({**h, "K0": 6, "channels": [64, 64, 64, 64, 192]})
    msg = str(ei.value)
    assert "K0: 4 in the checkpoint, 6 now" in msg and "channels" in msg and "--output_folder" in msg
    # another data folder: other N, or same N with other IDs
    _csv(tmp_path / "train.csv", 12)
    with pytest.raises(rc.RefusedError, match=r"training CSV does not match.*N=10 in the checkpoint, N=12 now.*data_folder"):
        rc.check_training_data(h)
    _csv(tmp_path / "train.csv", 10, prefix="v")
    with pytest.raises(rc.RefusedError, match="other IDs or order"):
        rc.check_training_data(h)
    _csv(tmp_path / "train.csv", 10)
    rc.check_training_data(h)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"number_of_epochs": 0}, "--number_of_epochs=0: nothing would be trained"),
        ({"K0": 1}, "--K0=1: pseudo labels need at least 2 clusters"),
        ({"K0": -3}, "--K0=-3: pseudo labels need at least 2 clusters"),
        ({"batch_size": 0}, "--batch_size=0: a batch needs at least one utterance"),
    ],
)
def test_degenerate_settings_are_refused_before_the_yaml_is_loaded(tmp_path, override, message):
    base = {"data_folder": str(tmp_path), "dino_folder": str(tmp_path), "output_folder": str(tmp_path / "out")}
    with pytest.raises(rc.RefusedError, match=message):
        rc.load_hparams(SSRL_YAML, {**base, **override})
    assert not (tmp_path / "out").exists()


def test_batch_size_larger_than_n_is_refused(tmp_path):
    with pytest.raises(rc.RefusedError, match=r"--batch_size=11 is larger than the 10 training utterances"):
        rc.check_training_data(_hparams(tmp_path, n=10, batch_size=11))
    with pytest.raises(rc.RefusedError, match=r"larger than the 5 training utterances shared by 2 processes"):
        rc.check_batch_size(6, 10, "train.csv", world_size=2)


def test_missing_trial_list_or_augmentation_folder_is_refused_naming_the_key(tmp_path):
    a, b = tmp_path / "vox2", tmp_path / "vox1"
    for d in (a / "noise", b / "rir"):
        d.mkdir(parents=True)
    (b / "veri_test2.txt").write_text("")
    h = {"data_folder": f"{a},{b}", "save_folder": str(tmp_path / "out" / "save"), "verification_file": str(b / "veri_test2.txt"),
         "noise_folder": str(a / "noise"), "rir_folder": str(b / "rir"), "noise_csv": "n.csv", "rir_csv": "r.csv"}
    rc.check_data_paths(h)
    rc.check_before_start(h)
    missing = str(a / "veri_test2.txt")
    with pytest.raises(rc.RefusedError, match=rf"--verification_file={missing}: no such file\. .*none of {a}, {b} .*Fix: pass --verification_file="):
        rc.check_before_start({**h, "verification_file": missing})
    rc.check_data_paths({**h, "verification_file": missing, "skip_prep": True})  # not read then
    with pytest.raises(rc.RefusedError, match=r"--rir_folder=.*/vox2/rir: no such folder.*Fix: pass --rir_folder=<a folder of room"):
        rc.check_data_paths({**h, "rir_folder": str(a / "rir")})
    rc.check_data_paths({**h, "rir_folder": str(a / "rir"), "rir_csv": None})  # augmentation without RIRs: not read
    rc.check_data_paths({**h, "data_folder": f"{a},{tmp_path / 'absent'}", "verification_file": missing})  # the preparation names the root
