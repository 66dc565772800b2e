"""Recipe yamls (issue 14): defaults that work with several data roots, SpeechBrain-style headers that name
only files of this repository."""

import os
import re

import pytest
import torch

from speechbrain_ssrl import recipe_checks as rc

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(REPO, "recipes", "VoxCeleb", "SSRL")
TRAIN_YAMLS = [
    "hparams/dino_ecapa.yaml", "hparams/ssrl_ecapa.yaml", "hparams/iterative_ecapa.yaml",
    "hparams/minivox/dino_ecapa.yaml", "hparams/minivox/ssrl_ecapa.yaml", "hparams/minivox/iterative_ecapa.yaml",
]
ALL_YAMLS = TRAIN_YAMLS + ["hparams/verification.yaml"]


@pytest.fixture()
def two_roots(tmp_path):
    """VoxCeleb2-like and VoxCeleb1-like roots: the trial list in the second root's meta/, noise/ in the first,
    rir/ in the second."""
    vox2, vox1 = tmp_path / "voxceleb2", tmp_path / "voxceleb1"
    (vox2 / "noise").mkdir(parents=True)
    (vox1 / "meta").mkdir(parents=True)
    (vox1 / "rir").mkdir()
    (vox1 / "meta" / "veri_test2.txt").write_text("1 id1/a/1.wav id1/b/2.wav\n")
    return vox2, vox1


@pytest.mark.parametrize("yaml", TRAIN_YAMLS)
def test_defaults_with_two_data_roots(yaml, two_roots, tmp_path):
    vox2, vox1 = two_roots
    base = {"data_folder": f"{vox2},{vox1}", "output_folder": str(tmp_path / "out")}
    if "dino" not in yaml:
        base["dino_folder"] = str(tmp_path / "dino")
    h = rc.load_hparams(os.path.join(RECIPE, yaml), base)
    assert h["verification_file"] == str(vox1 / "meta" / "veri_test2.txt")
    assert h["noise_folder"] == str(vox2 / "noise") and h["rir_folder"] == str(vox1 / "rir")
    assert h["valid_data_folders"] == f"{vox2},{vox1}"
    rc.check_data_paths(h)
    # explicit values win; one root gives what <data_folder>/<name> gave
    h = rc.load_hparams(os.path.join(RECIPE, yaml), {**base, "verification_file": "/lists/veri_test2.txt", "noise_folder": "/musan"})
    assert h["verification_file"] == "/lists/veri_test2.txt" and h["noise_folder"] == "/musan"
    h = rc.load_hparams(os.path.join(RECIPE, yaml), {**base, "data_folder": str(vox2)})
    assert h["verification_file"] == str(vox2 / "veri_test2.txt") and h["noise_folder"] == str(vox2 / "noise")
    with pytest.raises(rc.RefusedError, match="--verification_file=.*voxceleb2/veri_test2.txt: no such file"):
        rc.check_data_paths(h)


def _comment_lines(text):
    return [ln for ln in text.splitlines() if ln.lstrip().startswith("#") or " # " in ln]


@pytest.mark.parametrize("yaml", ALL_YAMLS)
def test_header_in_speechbrain_style_and_files_named_exist(yaml):
    with open(os.path.join(RECIPE, yaml), encoding="utf-8") as f:
        text = f.read()
    header = text[: text.index("# ####", 10)]
    assert header.startswith("# ####")
    for field in ("# Model:", "# Authors:", "# Usage"):
        assert field in header, f"{yaml}: no {field!r} line in the header"
    assert re.search(r"python (train|evaluate)\.py " + re.escape(yaml), header), f"{yaml}: the header does not say how to run it"
    # every file a comment names is in this repository (a bare *.md, or a path with a folder)
    bases = [REPO, RECIPE, os.path.join(REPO, "speechbrain_ssrl")]
    for ln in _comment_lines(text):
        for name in re.findall(r"[\w.-]*/?[\w./-]+\.(?:py|md|yaml)\b", ln.split("#", 1)[1]):
            if name.startswith("/") or "<" in name or ("/" not in name and not name.endswith(".md")):
                continue
            assert any(os.path.exists(os.path.join(b, name)) for b in bases), f"{yaml} names {name}, not in this repository"
