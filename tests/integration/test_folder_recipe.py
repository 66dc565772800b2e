"""train.py with ``data_format: folder`` / ``csv`` (issue #15): an archive of long mixed-format recordings
(flac 44.1 kHz stereo, mp3, 8 kHz wav) made from MiniVox trains DINO through the folder preparation; a
folder without usable audio and an unknown data format are refused in one line."""

import csv
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from speechbrain_ssrl.data.minivox_archive import ArchiveConfig, build_archive, count_crossing_segments, read_turns
from recipe_utils import TINY_DINO, history, run_recipe

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def mixed_archive(minivox, out, seed=0):
    """The worked example's archive (``minivox_archive.build_archive``) of the CI MiniVox: long recordings in
    FLAC 44.1 kHz stereo, MP3 22.05 kHz, WAV 8 kHz and WAV 16 kHz, some with two speakers in turns."""
    return build_archive(minivox, out, ArchiveConfig(seed=seed, format_weights=(1, 1, 1, 1)), progress=False)


@needs_ffmpeg
def test_dino_then_ssrl_on_a_folder_of_mixed_recordings(minivox_ci, tmp_path, monkeypatch):
    """The worked example in miniature: DINO, then SSRL from it, through the folder preparation; SSRL's
    history.csv holds the label-free health columns and none that need true speakers (issue #15, item 2)."""
    archive = str(tmp_path / "archive")
    info = mixed_archive(minivox_ci, archive)
    n_converted = info["recordings"] - info["formats"].get("wav_16k", 0)
    assert n_converted >= 2, info["formats"]
    out = str(tmp_path / "dino_folder")
    env_cache = str(tmp_path / "cache")
    monkeypatch.setenv("SSRL_CACHE", env_cache)  # converted audio and the journal (default ~/.cache)
    run_recipe(  # noise/ and rir/ of the archive are found by the yaml's defaults, and not taken as training audio
        "train.py", "hparams/minivox/dino_ecapa.yaml", "--data_format=folder", f"--data_folder={archive}",
        f"--output_folder={out}", "--number_of_epochs=1", "--segment_max_seconds=8", "--prep_jobs=1", *TINY_DINO,
    )
    with open(os.path.join(out, "save", "train.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 12 and {r["spk_id"] for r in rows} == {""}
    assert all(2.0 <= float(r["duration"]) <= 8.0 for r in rows)  # the yaml keys segment_min/max_seconds
    assert all(r["ID"].startswith("recordings--") for r in rows)  # not noise/ or rir/
    with open(os.path.join(out, "save", "conversions.tsv")) as f:
        assert len(f.readlines()) == 1 + n_converted  # header + every recording that is not 16 kHz mono wav
    counts = count_crossing_segments(os.path.join(out, "save", "train.csv"), archive)
    assert counts["unmatched"] == 0 and counts["speakers_found"] == info["speakers"] and counts["segments"] == len(rows)
    with open(os.path.join(out, "log.txt")) as f:  # the preparation's summary, in the run's log
        log = f.read()
    assert f"data preparation: {n_converted} file(s) converted to 16000 Hz mono wav with ffmpeg" in log
    assert "no speaker labels" in log
    assert os.path.isfile(os.path.join(out, "pretrained", "embedding_model.ckpt"))
    assert [r["epoch"] for r in history(out)] == ["1"]
    assert os.path.isdir(os.path.join(env_cache, "prepared"))

    rows_dino = rows
    ssrl = str(tmp_path / "ssrl_folder")
    run_recipe(
        "train.py", "hparams/minivox/ssrl_ecapa.yaml", "--data_format=folder", f"--data_folder={archive}",
        f"--dino_folder={out}", f"--output_folder={ssrl}", "--K0=12", "--fixed_label_epochs=1", "--number_of_epochs=2",
        "--queue_length=1", "--segment_max_seconds=8", "--prep_jobs=1", *TINY_DINO[:6],
    )
    with open(os.path.join(ssrl, "save", "train.csv"), newline="") as f:
        assert list(csv.DictReader(f)) == rows_dino  # the same segments (the preparation's journal)
    rows = history(ssrl)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    cols = set(rows[0])
    assert {"n_clusters", "labels_changed", "hat_changed", "mean_p", "frac_noisy", "size_median"} <= cols
    assert not cols & {"nmi", "purity", "accuracy", "hat_nmi", "label_correct", "max_speakers_per_home", "eer"}
    assert all(r["hat_changed"] != "" and 0.0 <= float(r["hat_changed"]) <= 1.0 for r in rows[1:])
    assert 1 <= int(rows[-1]["n_clusters"]) <= 12
    assert not os.path.exists(os.path.join(ssrl, "label_merges.csv"))
    assert os.path.isfile(os.path.join(ssrl, "pretrained", "embedding_model.ckpt"))


def test_folder_without_audio_and_unknown_format_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SSRL_CACHE", str(tmp_path / "cache"))
    empty = tmp_path / "my recordings"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    aug = []
    for kind in ("noise", "rir"):  # augmentation folders that exist: the refusal is about the data folder
        (tmp_path / kind).mkdir()
        sf.write(tmp_path / kind / "a.wav", np.full(1600, 0.01, np.float32), 16000)
        aug.append(f"--{kind}_folder={tmp_path / kind}")
    out = str(tmp_path / "run")
    proc = run_recipe("train.py", "hparams/minivox/dino_ecapa.yaml", "--data_format=folder", f"--data_folder={empty}",
                      f"--output_folder={out}", *aug, check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert str(empty) in last and "no audio file" in last and "Fix:" in last
    assert not os.path.exists(out)
    proc = run_recipe("train.py", "hparams/minivox/dino_ecapa.yaml", "--data_format=wavs", f"--data_folder={empty}",
                      f"--output_folder={out}", *aug, check=False)
    assert proc.returncode == 1
    assert "--data_format=wavs: not a data format. Fix: pass voxceleb" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow  # the CSV preparation itself is tested in tests/unit/test_folder_prepare.py
@needs_ffmpeg
def test_dino_on_a_csv_without_speaker_column(minivox_ci, tmp_path, monkeypatch):
    """data_format: csv with ranges in seconds and no speaker column trains; the ranges are respected."""
    monkeypatch.setenv("SSRL_CACHE", str(tmp_path / "cache"))
    archive = str(tmp_path / "archive")
    mixed_archive(minivox_ci, archive)
    names = sorted(read_turns(archive))
    lst = tmp_path / "list.csv"
    with open(lst, "w") as f:
        f.write("ID,wav,start,stop\n")
        for i, name in enumerate(names):
            f.write(f"rec{i}a,archive/{name},0,12\nrec{i}b,archive/{name},12,\n")
    out = str(tmp_path / "dino_csv")
    run_recipe(
        "train.py", "hparams/minivox/dino_ecapa.yaml", "--data_format=csv", f"--data_folder={lst}",
        f"--noise_folder={minivox_ci}/noise", f"--rir_folder={minivox_ci}/rir", f"--output_folder={out}",
        "--number_of_epochs=1", *TINY_DINO,
    )
    with open(os.path.join(out, "save", "train.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["spk_id"] for r in rows} == {""} and len(rows) >= 8
    for r in rows:
        first = r["ID"].split("--")[0].endswith("a")
        assert (int(r["stop"]) <= 12 * 16000) if first else (int(r["start"]) >= 12 * 16000), r
    assert [x["epoch"] for x in history(out)] == ["1"]

