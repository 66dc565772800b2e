"""MiniVox: layout, audio format, speaker/voice separation, trials, augmentation data, determinism,
idempotence, the size plans and the no-MBROLA fallback."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from speechbrain_ssrl.data import minivox
from speechbrain_ssrl.data.augment_data import AUGMENT_CSV_HEADER, make_augment_csv
from speechbrain_ssrl.data.trials import read_trials

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def _meta(root):
    with open(os.path.join(root, "meta.csv"), newline="") as f:
        return {r["spk_id"]: r for r in csv.DictReader(f)}


def _wavs(root):
    out = []
    for dirpath, _, files in os.walk(os.path.join(root, "wav")):
        out += [os.path.join(dirpath, f) for f in files]
    return sorted(out)


@pytest.fixture(scope="module")
def inventory():
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed: run tools/install_system_deps.sh")
    return minivox.discover_voices()


@pytest.fixture(scope="module")
def sentences():
    if not os.path.isdir(minivox.LICENSES_DIR):
        pytest.skip(f"{minivox.LICENSES_DIR} missing (not a Debian machine)")
    return minivox.extract_sentences()


# ---------------------------------------------------------------------------------------- layout
def test_layout_and_audio_format(minivox_ci):
    files = _wavs(minivox_ci)
    meta = _meta(minivox_ci)
    assert len(files) == sum(int(r["n_utterances"]) for r in meta.values())
    for path in files:
        rel = os.path.relpath(path, os.path.join(minivox_ci, "wav")).split(os.sep)
        assert len(rel) == 3 and rel[2].endswith(".wav"), rel
        assert rel[0] in meta
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 2.5 <= info.duration <= minivox.MAX_UTT_SECONDS + 0.01
    for name in ("veri_test2.txt", "meta.csv", "utterances.csv", "noise.csv", "rir.csv", "build_info.json"):
        assert os.path.isfile(os.path.join(minivox_ci, name)), name
    info = json.load(open(os.path.join(minivox_ci, "build_info.json")))
    assert info["complete"] and info["size"] == "ci" and info["seed"] == 0


def test_noise_fills_digital_silence(minivox_ci):
    for path in _wavs(minivox_ci)[::7]:
        x, _ = sf.read(path, dtype="int16")
        assert np.mean(x == 0) < 0.02, f"{path} has digital silence"
        assert np.abs(x).max() < 32767  # no clipping


def test_speakers_splits_and_voices(minivox_ci):
    meta = _meta(minivox_ci)
    train = {k: v for k, v in meta.items() if v["split"] == "train"}
    test = {k: v for k, v in meta.items() if v["split"] == "test"}
    assert 2 <= len(test) and 2 <= len(train) and len(meta) <= 12
    assert all(k.startswith("id1") and len(k) == 7 for k in test)
    assert all(k.startswith("id2") and len(k) == 7 for k in train)
    # no person is heard on both sides; transformed copies are training speakers only
    assert not {v["person"] for v in test.values()} & {v["person"] for v in train.values()}
    assert all(v["transform"] == "none" for v in test.values())
    assert any(v["transform"] != "none" for v in train.values())
    # several sessions per speaker
    for spk in meta:
        assert len(os.listdir(os.path.join(minivox_ci, "wav", spk))) == int(meta[spk]["n_sessions"]) >= 2


def test_trial_list(minivox_ci):
    trials = read_trials(os.path.join(minivox_ci, "veri_test2.txt"))
    meta = _meta(minivox_ci)
    labels = Counter(t.label for t in trials)
    assert labels[0] > 0 and labels[1] > 0
    pairs = set()
    for t in trials:
        assert meta[t.enrol_spk]["split"] == "test" and meta[t.test_spk]["split"] == "test"
        assert t.label == int(t.enrol_spk == t.test_spk)
        assert t.enrol != t.test
        assert os.path.isfile(os.path.join(minivox_ci, "wav", t.enrol))
        key = tuple(sorted((t.enrol, t.test)))
        assert key not in pairs
        pairs.add(key)


def test_augmentation_material(minivox_ci):
    for sub, csv_name in (("noise", "noise.csv"), ("rir", "rir.csv")):
        with open(os.path.join(minivox_ci, csv_name), newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == AUGMENT_CSV_HEADER
        assert len(rows) - 1 == len(os.listdir(os.path.join(minivox_ci, sub)))
        for r in rows[1:]:
            assert os.path.isabs(r[2]) and os.path.isfile(r[2]) and float(r[1]) > 0
    names = os.listdir(os.path.join(minivox_ci, "noise"))
    assert any(n.startswith("babble") for n in names)
    assert {"white", "pink", "brown"} <= {n.split("_")[0] for n in names}
    for name in os.listdir(os.path.join(minivox_ci, "rir")):
        h, sr = sf.read(os.path.join(minivox_ci, "rir", name))
        assert sr == 16000 and np.argmax(np.abs(h)) < 0.005 * sr  # direct path first and largest


def test_augment_csv_reads_in_speechbrain(minivox_ci):
    import torch
    from speechbrain.augment.time_domain import AddNoise, AddReverb

    torch.manual_seed(0)
    x = torch.randn(2, 16000) * 0.1
    lens = torch.ones(2)
    y = AddNoise(csv_file=os.path.join(minivox_ci, "noise.csv"), snr_low=0, snr_high=10)(x, lens)
    z = AddReverb(csv_file=os.path.join(minivox_ci, "rir.csv"))(x)
    assert y.shape == x.shape and z.shape == x.shape
    assert not torch.allclose(y, x) and not torch.allclose(z, x)


# ------------------------------------------------------------------------------- idempotence
def test_rebuild_is_a_no_op(minivox_ci, capsys):
    files = _wavs(minivox_ci)
    mtimes = [os.path.getmtime(p) for p in files]
    t0 = time.time()
    assert minivox.build(minivox_ci, size="ci", seed=0) == minivox_ci
    assert time.time() - t0 < 2.0
    assert "nothing to do" in capsys.readouterr().out
    assert [os.path.getmtime(p) for p in files] == mtimes


def test_other_arguments_on_a_built_folder_are_refused(minivox_ci):
    with pytest.raises(ValueError, match="seed=0"):
        minivox.build(minivox_ci, size="ci", seed=1)
    with pytest.raises(ValueError, match="unknown MiniVox size"):
        minivox.build(minivox_ci, size="huge")


def test_foreign_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a MiniVox folder"):
        minivox.build(str(tmp_path), size="ci")


def test_interrupted_build_resumes(minivox_ci, tmp_path):
    root = str(tmp_path / "copy")
    shutil.copytree(minivox_ci, root)
    info_path = os.path.join(root, "build_info.json")
    info = json.load(open(info_path))
    info["complete"] = False
    json.dump(info, open(info_path, "w"))
    victim = _wavs(root)[3]
    reference = open(victim, "rb").read()
    os.remove(victim)
    os.remove(os.path.join(root, "veri_test2.txt"))
    minivox.build(root, size="ci", seed=0, progress=False)
    assert open(victim, "rb").read() == reference  # re-rendered identically
    assert os.path.isfile(os.path.join(root, "veri_test2.txt"))
    assert json.load(open(info_path))["complete"]


# ------------------------------------------------------------------------------- determinism
def test_plan_and_render_are_deterministic(inventory, sentences, tmp_path):
    a = minivox.make_plan("ci", 0, inventory, sentences)
    b = minivox.make_plan("ci", 0, inventory, sentences)
    c = minivox.make_plan("ci", 1, inventory, sentences)
    assert a.digest() == b.digest() and a.trials == b.trials
    assert a.digest() != c.digest()
    job = next(j for j in a.jobs if j.transform_cents)  # the sox path
    mbrola = [j for j in a.jobs if j.engine == "mbrola"][:3]  # mbrola from espeak-ng's phonemes
    assert mbrola or not inventory.mbrola
    for job in (job, a.jobs[0], *mbrola):
        minivox.render_utterance(job, str(tmp_path / "x"))
        minivox.render_utterance(job, str(tmp_path / "y"))
        rel = job.rel_path.split("/")
        assert open(tmp_path.joinpath("x", *rel), "rb").read() == open(tmp_path.joinpath("y", *rel), "rb").read()


def test_sentences(sentences, inventory):
    assert len(sentences) > 500 and len(set(sentences)) == len(sentences)
    assert all(6 <= len(s.split()) <= 20 for s in sentences)
    plan = minivox.make_plan("ci", 0, inventory, sentences)
    split = {s.spk_id: s.split for s in plan.speakers}
    texts = {"train": set(), "test": set()}
    for j in plan.jobs:
        texts[split[j.spk_id]].add(j.text)
    assert not texts["train"] & texts["test"]
    per_spk = Counter((j.spk_id, j.text) for j in plan.jobs)
    assert max(per_spk.values()) == 1  # a different sentence for every utterance of a speaker
    for j in plan.jobs:
        assert 30 <= j.pitch <= 70 and 140 <= j.speed <= 190


# -------------------------------------------------------------------------------------- sizes
def _check_plan(plan, min_train_spk, min_utts_per_spk, min_test, min_trials):
    train = [s for s in plan.speakers if s.split == "train"]
    test = [s for s in plan.speakers if s.split == "test"]
    assert len(train) >= min_train_spk and len(test) >= min_test
    assert len(plan.trials) >= min_trials
    n = Counter(j.spk_id for j in plan.jobs)
    assert min(n[s.spk_id] for s in train) >= min_utts_per_spk
    assert not {s.voice.person for s in test} & {s.voice.person for s in train}
    assert len({s.spk_id for s in plan.speakers}) == len(plan.speakers)
    return train, test


def test_demo_and_large_plans_meet_their_sizes(inventory, sentences):
    if not inventory.mbrola:
        pytest.skip("MBROLA voices not installed")
    demo = minivox.make_plan("demo", 0, inventory, sentences)
    train, test = _check_plan(demo, 100, 15, 20, 5000)
    n_train_utts = sum(1 for j in demo.jobs if j.spk_id.startswith("id2"))
    assert 2000 <= n_train_utts <= 3000
    assert all(s.voice.english for s in test)
    assert {"awb", "slt"} <= {s.voice.name for s in test}  # the RHVoice twins stay on the test side
    assert not any(s.voice.name in ("awb", "slt", "rms") for s in train)
    large = minivox.make_plan("large", 0, inventory, sentences)
    _check_plan(large, 300, 60, 20, 5000)
    assert {s.voice.name for s in large.speakers if s.split == "test"} == {s.voice.name for s in test}


def test_fallback_without_mbrola(inventory, sentences):
    no_mbrola = minivox.VoiceInventory((), inventory.flite, inventory.espeak)
    plan = minivox.make_plan("demo", 0, no_mbrola, sentences)
    assert not plan.mbrola and any("MBROLA" in n for n in plan.notes)
    train, test = _check_plan(plan, 50, 15, 10, 1000)
    assert all(s.voice.engine != "mbrola" for s in plan.speakers)
    ci = minivox.make_plan("ci", 0, no_mbrola, sentences)
    _check_plan(ci, 2, 8, 2, 50)


@needs_espeak
def test_fallback_build_without_mbrola(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(minivox, "MBROLA_DIR", str(tmp_path / "no_mbrola"))
    root = minivox.build(str(tmp_path / "mv"), size="ci", seed=0, progress=False)
    assert "WARNING: MBROLA voices are not installed" in capsys.readouterr().err
    meta = _meta(root)
    assert all(v["engine"] != "mbrola" for v in meta.values())
    assert {v["split"] for v in meta.values()} == {"train", "test"}
    assert not json.load(open(os.path.join(root, "build_info.json")))["mbrola"]
    assert read_trials(os.path.join(root, "veri_test2.txt"))


def test_simulated_rir_and_noise():
    rng = np.random.default_rng(0)
    for rt60 in (0.2, 0.8):
        h = minivox.simulated_rir(rng, rt60)
        d = int(np.argmax(np.abs(h)))
        assert h[d] == pytest.approx(1.0) and np.all(np.abs(np.delete(h, d)) < 1.0)
        tail = h[d + 1 :] ** 2
        half = int(rt60 * 16000 / 2)
        assert tail[half : 2 * half].sum() < tail[:half].sum()  # it decays
    for colour in minivox.NOISE_COLOURS:
        n = minivox.coloured_noise(16000, colour, rng)
        assert n.std() == pytest.approx(1.0, rel=1e-3)


def test_make_augment_csv_pieces_and_skip(tmp_path):
    src = tmp_path / "noises" / "sub"
    src.mkdir(parents=True)
    sf.write(str(src / "long.wav"), np.random.default_rng(0).normal(0, 0.1, 16000 * 5), 16000)
    sf.write(str(src / "stereo.wav"), np.random.default_rng(1).normal(0, 0.1, (8000, 2)), 16000)
    (src / "notes.txt").write_text("ignored")
    before = sorted(os.listdir(src))
    csv_file = str(tmp_path / "noise.csv")
    make_augment_csv(str(tmp_path / "noises"), csv_file, max_length=2.0)
    assert sorted(os.listdir(src)) == before  # the source folder is untouched
    with open(csv_file, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == AUGMENT_CSV_HEADER
    durations = sorted(float(r[1]) for r in rows[1:])
    assert durations == [0.5, 1.0, 2.0, 2.0]  # 5 s -> 2 + 2 + 1; stereo -> mono piece
    for r in rows[1:]:
        assert sf.info(r[2]).channels == 1
    mtime = os.path.getmtime(csv_file)
    time.sleep(0.01)
    make_augment_csv(str(tmp_path / "noises"), csv_file, max_length=2.0)
    assert os.path.getmtime(csv_file) == mtime  # up to date: skipped
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_augment_csv(str(tmp_path / "nope"), str(tmp_path / "x.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no wav file"):
        make_augment_csv(str(tmp_path / "empty"), str(tmp_path / "x.csv"))


def test_cli_help():
    with pytest.raises(SystemExit) as e:
        minivox.main(["--help"])
    assert e.value.code == 0
