"""The recipe inside a SpeechBrain checkout: training files from SpeechBrain's shared voxceleb_prepare.py.

A small SpeechBrain-layout checkout is built by the fixture (``recipes/VoxCeleb/voxceleb_prepare.py``
written here: SpeechBrain's interface and behaviour — shuffled rows, whole-file rows with
``random_segment=True``, only the enrolment side's speakers left out, every file decoded — and
``recipes/VoxCeleb/SSRL`` holding the recipe's own ``voxceleb_prepare.py``). With a real SpeechBrain
source tree in ``SPEECHBRAIN_SOURCE`` the same comparison also runs on its shared file.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import shutil
import textwrap

import pytest

from speechbrain_ssrl.data.shared_prepare import resolve_shared_prepare, speechbrain_train_files
from speechbrain_ssrl.data.voxceleb import OPT_FILE, prepare_voxceleb, preparation_is_current

RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "VoxCeleb", "SSRL")

# SpeechBrain's interface (recipes/VoxCeleb/voxceleb_prepare.py), written for this test
FAKE_SHARED = textwrap.dedent('''
    import csv, glob, os, random
    import soundfile as sf

    def prepare_voxceleb(data_folder, save_folder, verification_pairs_file, splits=["train", "dev", "test"],
                         split_ratio=[90, 10], seg_dur=3.0, amp_th=5e-04, source=None, split_speaker=False,
                         random_segment=False, skip_prep=False):
        assert random_segment and list(split_ratio) == [100, 0] and list(splits) == ["train"]
        os.makedirs(save_folder, exist_ok=True)
        enrol_spk = {line.split(" ")[1].split("/")[0] for line in open(verification_pairs_file)}
        files = []
        for root in data_folder.replace(" ", "").split(","):
            for f in glob.glob(os.path.join(root, "wav", "**", "*.wav"), recursive=True):
                if f.split("/wav/")[1].split("/")[0] not in enrol_spk:
                    files.append(f)
        random.shuffle(files)
        with open(os.path.join(save_folder, "train.csv"), "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["ID", "duration", "wav", "start", "stop", "spk_id"])
            for f in files:
                x, sr = sf.read(f)
                spk, sess, utt = f.split("/")[-3:]
                w.writerow(["--".join([spk, sess, utt[:-4]]), len(x) / 16000, f, 0, len(x), spk])
''')


@pytest.fixture()
def sb_checkout(tmp_path):
    """tmp/speechbrain/recipes/VoxCeleb/{voxceleb_prepare.py, SSRL/voxceleb_prepare.py}"""
    vox = tmp_path / "speechbrain" / "recipes" / "VoxCeleb"
    (vox / "SSRL").mkdir(parents=True)
    (vox / "voxceleb_prepare.py").write_text(FAKE_SHARED)
    shutil.copy(os.path.join(RECIPE, "voxceleb_prepare.py"), vox / "SSRL" / "voxceleb_prepare.py")
    return vox


def _load_recipe_prepare(path):
    spec = importlib.util.spec_from_file_location("voxceleb_prepare_in_checkout", str(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _same_train_csv(minivox, tmp_path, shared):
    trials = os.path.join(minivox, "veri_test2.txt")
    ours = prepare_voxceleb(minivox, str(tmp_path / "ours"), trials)["train"]
    state = random.getstate()
    theirs = prepare_voxceleb(minivox, str(tmp_path / "sb"), trials, shared_prepare=shared)["train"]
    assert random.getstate() == state  # SpeechBrain's shuffle does not move the run's seeding
    assert _text(theirs) == _text(ours)
    with open(theirs, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == ["ID", "duration", "wav", "start", "stop", "spk_id"]
    assert not [n for n in os.listdir(tmp_path / "sb") if n.startswith(".speechbrain_prepare")]  # work folder gone


def test_recipe_finds_shared_prepare_in_a_checkout(sb_checkout):
    mod = _load_recipe_prepare(sb_checkout / "SSRL" / "voxceleb_prepare.py")
    assert mod.shared_prepare_for("auto") == str(sb_checkout / "voxceleb_prepare.py")
    assert mod.shared_prepare_for("speechbrain") == str(sb_checkout / "voxceleb_prepare.py")
    assert mod.shared_prepare_for("ssrl") is None


def test_outside_a_checkout_auto_falls_back_and_speechbrain_refuses(tmp_path):
    recipe = tmp_path / "recipes" / "VoxCeleb" / "SSRL"
    recipe.mkdir(parents=True)
    assert resolve_shared_prepare("auto", str(recipe)) is None
    with pytest.raises(FileNotFoundError, match="voxceleb_prepare: speechbrain needs"):
        resolve_shared_prepare("speechbrain", str(recipe))
    with pytest.raises(ValueError, match="voxceleb_prepare: 'kaldi' is not one of"):
        resolve_shared_prepare("kaldi", str(recipe))
    # this repository's own recipe has no shared file above it: the installed plugin's listing is used
    assert resolve_shared_prepare("auto", RECIPE) is None


def test_shared_and_own_preparation_give_the_same_train_csv(minivox_ci, sb_checkout, tmp_path):
    _same_train_csv(minivox_ci, tmp_path, str(sb_checkout / "voxceleb_prepare.py"))


def test_switching_source_re_prepares(minivox_ci, sb_checkout, tmp_path):
    trials = os.path.join(minivox_ci, "veri_test2.txt")
    shared = str(sb_checkout / "voxceleb_prepare.py")
    save = str(tmp_path / "s")
    prepare_voxceleb(minivox_ci, save, trials)
    assert preparation_is_current(minivox_ci, save, trials)
    assert not preparation_is_current(minivox_ci, save, trials, shared_prepare=shared)
    prepare_voxceleb(minivox_ci, save, trials, shared_prepare=shared)
    with open(os.path.join(save, OPT_FILE), encoding="utf-8") as f:
        assert json.load(f)["train_list"]["speechbrain_prepare"] == os.path.abspath(shared)
    assert preparation_is_current(minivox_ci, save, trials, shared_prepare=shared)


def test_listing_keeps_only_paths_under_the_roots(minivox_ci, sb_checkout, tmp_path):
    files = speechbrain_train_files(str(sb_checkout / "voxceleb_prepare.py"), [minivox_ci],
                                    os.path.join(minivox_ci, "veri_test2.txt"), str(tmp_path))
    rels = [r for r, _ in files]
    assert rels == sorted(rels) and len(set(rels)) == len(rels)
    assert all(p.endswith(r) and os.path.isfile(p) for r, p in files)


@pytest.mark.skipif(not os.path.isfile(os.path.join(os.environ.get("SPEECHBRAIN_SOURCE", "/nonexistent"),
                                                    "recipes", "VoxCeleb", "voxceleb_prepare.py")),
                    reason="set SPEECHBRAIN_SOURCE to a SpeechBrain source tree to compare with its shared file")
def test_real_speechbrain_shared_prepare(minivox_ci, tmp_path):
    shared = os.path.join(os.environ["SPEECHBRAIN_SOURCE"], "recipes", "VoxCeleb", "voxceleb_prepare.py")
    _same_train_csv(minivox_ci, tmp_path, shared)
