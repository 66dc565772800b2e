"""prepare_voxceleb: CSV layout, speaker disjointness, idempotence and every bad-input case."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf

from speechbrain_ssrl.data.trials import read_trials
from speechbrain_ssrl.data.voxceleb import (
    CSV_HEADER,
    OPT_FILE,
    SKIPPED_FILE,
    check_audio,
    convert_m4a_to_wav,
    prepare_voxceleb,
)

RECIPE_PREPARE = os.path.join(
    os.path.dirname(__file__), "..", "..", "recipes", "VoxCeleb", "SSRL", "voxceleb_prepare.py"
)


def _rows(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [dict(zip(header, r)) for r in reader]


def _tone(seconds, sr=16000, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    x = 0.3 * np.sin(2 * np.pi * (100 + 50 * seed) * np.arange(n) / sr) + rng.normal(0, 0.01, n)
    return np.stack([x] * channels, 1) if channels > 1 else x


def _write(root, rel, seconds=2.0, sr=16000, channels=1, seed=0):
    path = os.path.join(root, "wav", *rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, _tone(seconds, sr, channels, seed), sr, subtype="PCM_16")
    return path


@pytest.fixture
def toy(tmp_path):
    """A tiny VoxCeleb-layout corpus: test speakers idT1/idT2, train speakers idA/idB."""
    root = str(tmp_path / "vox")
    for spk, seed in (("idT1", 1), ("idT2", 2), ("idA", 3), ("idB", 4)):
        for video in ("vid1", "vid2"):
            for n in (1, 2):
                _write(root, f"{spk}/{video}/0000{n}.wav", seconds=1.5 + 0.1 * n, seed=seed)
    trials = os.path.join(root, "veri_test2.txt")
    with open(trials, "w") as f:
        f.write("1 idT1/vid1/00001.wav idT1/vid2/00001.wav\n")
        f.write("0 idT1/vid1/00001.wav idT2/vid1/00002.wav\n")
    return root, trials


# ---------------------------------------------------------------------------------- MiniVox
def test_minivox_csvs(minivox_ci, prepared_ci):
    trials = read_trials(os.path.join(minivox_ci, "veri_test2.txt"))
    header_tr, train = _rows(os.path.join(prepared_ci, "train.csv"))
    header_te, test = _rows(os.path.join(prepared_ci, "test.csv"))
    assert header_tr == header_te == CSV_HEADER == ["ID", "duration", "wav", "start", "stop", "spk_id"]
    for r in train + test:
        assert os.path.isabs(r["wav"]) and os.path.isfile(r["wav"])
        info = sf.info(r["wav"])
        assert r["start"] == "0" and int(r["stop"]) == info.frames
        assert float(r["duration"]) == pytest.approx(info.frames / 16000, abs=1e-3)
        rel = os.path.relpath(r["wav"], os.path.join(minivox_ci, "wav")).replace(os.sep, "/")
        assert r["ID"] == rel[:-4].replace("/", "--") and r["spk_id"] == rel.split("/")[0]
    assert len({r["ID"] for r in train + test}) == len(train) + len(test)
    trial_spk = {t.enrol_spk for t in trials} | {t.test_spk for t in trials}
    assert not {r["spk_id"] for r in train} & trial_spk
    assert {r["spk_id"] for r in test} == trial_spk
    named = {t.enrol for t in trials} | {t.test for t in trials}
    assert {os.path.relpath(r["wav"], os.path.join(minivox_ci, "wav")).replace(os.sep, "/") for r in test} == named
    n_wavs = sum(len(fs) for _, _, fs in os.walk(os.path.join(minivox_ci, "wav")))
    assert len(train) + len(test) == n_wavs
    assert open(os.path.join(prepared_ci, "veri_test2.txt")).read() == open(
        os.path.join(minivox_ci, "veri_test2.txt")
    ).read()
    assert open(os.path.join(prepared_ci, SKIPPED_FILE)).read() == ""


def test_rerun_does_nothing_and_new_options_redo(minivox_ci, tmp_path):
    save = str(tmp_path / "prep")
    trials = os.path.join(minivox_ci, "veri_test2.txt")
    prepare_voxceleb(minivox_ci, save, trials)
    mtime = os.path.getmtime(os.path.join(save, "train.csv"))
    time.sleep(0.01)
    prepare_voxceleb(minivox_ci, save, trials)
    assert os.path.getmtime(os.path.join(save, "train.csv")) == mtime
    prepare_voxceleb(minivox_ci, save, trials, min_duration=3.5)  # other options: prepared again
    assert os.path.getmtime(os.path.join(save, "train.csv")) > mtime
    assert json.load(open(os.path.join(save, OPT_FILE)))["min_duration"] == 3.5
    skipped = open(os.path.join(save, SKIPPED_FILE)).read()
    assert "too short" in skipped  # MiniVox has utterances under 3.5 s
    os.remove(os.path.join(save, "test.csv"))  # a missing CSV is rebuilt
    prepare_voxceleb(minivox_ci, save, trials, min_duration=3.5)
    assert os.path.isfile(os.path.join(save, "test.csv"))


def test_skip_prep_writes_nothing(tmp_path, toy):
    root, trials = toy
    out = prepare_voxceleb(root, str(tmp_path / "s"), trials, skip_prep=True)
    assert set(out) == {"train", "test"} and not os.path.exists(tmp_path / "s")


def test_splits_and_several_roots(tmp_path, toy):
    root, trials = toy
    root2 = str(tmp_path / "vox2")
    _write(root2, "idC/v/00001.wav", seed=5)
    for data_folder in (f"{root},{root2}", [root, root2]):
        save = str(tmp_path / f"s{len(str(data_folder))}")
        prepare_voxceleb(data_folder, save, trials)
        _, train = _rows(os.path.join(save, "train.csv"))
        assert {r["spk_id"] for r in train} == {"idA", "idB", "idC"}
    save = str(tmp_path / "only_test")
    out = prepare_voxceleb(root, save, trials, splits=("test",))
    assert list(out) == ["test"] and not os.path.exists(os.path.join(save, "train.csv"))
    _, test = _rows(out["test"])
    assert len(test) == 3
    with pytest.raises(ValueError, match="unknown split"):
        prepare_voxceleb(root, save, trials, splits=("dev",))


# ------------------------------------------------------------------------------- bad input
def test_missing_data_folder(tmp_path, toy):
    _, trials = toy
    missing = str(tmp_path / "does_not_exist")
    with pytest.raises(FileNotFoundError, match="does_not_exist.*does not exist"):
        prepare_voxceleb(missing, str(tmp_path / "s"), trials)


def test_folder_without_wav_hints_at_conversion(tmp_path, toy):
    _, trials = toy
    root = tmp_path / "vox2"
    (root / "aac" / "id1" / "v").mkdir(parents=True)
    (root / "aac" / "id1" / "v" / "00001.m4a").write_bytes(b"\0")
    with pytest.raises(FileNotFoundError, match="convert_m4a=True"):
        prepare_voxceleb(str(root), str(tmp_path / "s"), trials)


def test_empty_corpus(tmp_path, toy):
    _, trials = toy
    root = tmp_path / "empty"
    (root / "wav" / "id1" / "v").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="corpus is empty"):
        prepare_voxceleb(str(root), str(tmp_path / "s"), trials)


def test_missing_trial_list(tmp_path, toy):
    root, _ = toy
    with pytest.raises(FileNotFoundError, match="nope.txt does not exist"):
        prepare_voxceleb(root, str(tmp_path / "s"), str(tmp_path / "nope.txt"))


def test_trial_list_naming_missing_files(tmp_path, toy):
    root, _ = toy
    bad = tmp_path / "bad_trials.txt"
    bad.write_text("1 idT1/vid1/00001.wav idT1/vid9/00042.wav\n")
    with pytest.raises(FileNotFoundError, match=r"(?s)bad_trials.txt.*idT1/vid9/00042.wav"):
        prepare_voxceleb(root, str(tmp_path / "s"), str(bad))


def test_malformed_trial_list(tmp_path, toy):
    root, _ = toy
    bad = tmp_path / "bad_trials.txt"
    bad.write_text("1 idT1/vid1/00001.wav idT1/vid2/00001.wav\n2 a/b/c.wav a/b/d.wav\n")
    with pytest.raises(ValueError, match="bad_trials.txt, line 2"):
        prepare_voxceleb(root, str(tmp_path / "s"), str(bad))


def test_bad_training_files_are_skipped_and_listed(tmp_path, toy, caplog):
    root, trials = toy
    wav = os.path.join(root, "wav", "idA", "vid1")
    with open(os.path.join(wav, "garbage.wav"), "wb") as f:
        f.write(b"this is not audio at all" * 10)
    open(os.path.join(wav, "empty.wav"), "wb").close()
    good = _write(root, "idA/vid1/truncated.wav", seconds=2.0)
    data = open(good, "rb").read()
    with open(good, "wb") as f:
        f.write(data[: len(data) // 2])  # header still declares 2 s
    _write(root, "idA/vid1/short.wav", seconds=0.3)
    _write(root, "idA/vid1/eight_k.wav", sr=8000)
    _write(root, "idA/vid1/stereo.wav", channels=2)
    hdr_only = _write(root, "idA/vid1/no_samples.wav", seconds=0.0)
    save = str(tmp_path / "s")
    with caplog.at_level("WARNING"):
        prepare_voxceleb(root, save, trials, min_duration=1.0)
    lines = open(os.path.join(save, SKIPPED_FILE)).read().splitlines()
    reasons = {os.path.basename(line.split("\t")[0]): line.split("\t")[1] for line in lines}
    assert set(reasons) == {"garbage.wav", "empty.wav", "truncated.wav", "short.wav", "eight_k.wav",
                            "stereo.wav", "no_samples.wav"}
    assert reasons["garbage.wav"].startswith("unreadable")
    assert reasons["empty.wav"].startswith("empty")
    assert reasons["no_samples.wav"].startswith("empty")
    assert reasons["truncated.wav"].startswith("truncated")
    assert reasons["short.wav"].startswith("too short")
    assert "8000 Hz" in reasons["eight_k.wav"]
    assert "not mono" in reasons["stereo.wav"]
    assert "skipped 7 bad audio file(s)" in caplog.text and SKIPPED_FILE in caplog.text
    _, train = _rows(os.path.join(save, "train.csv"))
    assert len(train) == 8 and all(os.path.basename(r["wav"]).startswith("0000") for r in train)
    assert os.path.exists(hdr_only)


def test_bad_test_file_stops_with_its_name(tmp_path, toy):
    root, trials = toy
    with open(os.path.join(root, "wav", "idT2", "vid1", "00002.wav"), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(ValueError, match=r"(?s)idT2/vid1/00002.wav: unreadable.*re-download"):
        prepare_voxceleb(root, str(tmp_path / "s"), trials)


def test_no_training_speaker_left(tmp_path, toy):
    root, _ = toy
    trials = tmp_path / "all.txt"
    trials.write_text("1 idA/vid1/00001.wav idA/vid1/00002.wav\n0 idB/vid1/00001.wav idT1/vid1/00001.wav\n"
                      "0 idT2/vid1/00001.wav idT1/vid1/00002.wav\n")
    with pytest.raises(ValueError, match="no usable training utterance"):
        prepare_voxceleb(root, str(tmp_path / "s"), str(trials))


def test_check_audio_reads_only_headers(tmp_path):
    path = str(tmp_path / "a.wav")
    sf.write(path, _tone(1.25), 16000)
    info, why = check_audio(path)
    assert why is None and info.frames == 20000 and info.duration == 1.25


# -------------------------------------------------------------------------- m4a conversion
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_convert_m4a(tmp_path):
    root = tmp_path / "vox2"
    src = root / "dev" / "aac" / "id00012" / "abc"
    src.mkdir(parents=True)
    sf.write(str(tmp_path / "x.wav"), _tone(1.2, sr=44100, channels=2), 44100)
    res = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(tmp_path / "x.wav"),
                          "-c:a", "aac", str(src / "00001.m4a")], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"ffmpeg cannot encode aac here: {res.stderr.decode()[:200]}")
    trials = tmp_path / "t.txt"
    trials.write_text("1 id00012/abc/00001.wav id00012/abc/00001.wav\n")
    (root / "wav" / "idX" / "v").mkdir(parents=True)
    sf.write(str(root / "wav" / "idX" / "v" / "00001.wav"), _tone(2.0), 16000)
    prepare_voxceleb(str(root), str(tmp_path / "s"), str(trials), convert_m4a=True)
    out = root / "wav" / "id00012" / "abc" / "00001.wav"
    info = sf.info(str(out))
    assert (info.samplerate, info.channels) == (16000, 1) and abs(info.duration - 1.2) < 0.1
    assert convert_m4a_to_wav(str(root)) == 0  # already converted


# ----------------------------------------------------------------------- recipe wrapper
def test_recipe_wrapper_reexports_and_cli(tmp_path, toy, capsys):
    root, trials = toy
    spec = importlib.util.spec_from_file_location("voxceleb_prepare_recipe", RECIPE_PREPARE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.prepare_voxceleb is prepare_voxceleb
    mod.main(["--data_folder", root, "--save_folder", str(tmp_path / "s"), "--verification_pairs_file", trials])
    assert "train.csv" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "s" / "test.csv")
