"""The "unlabelled archive" worked example (issue #15): long mixed-format recordings made from MiniVox, the
truth of who speaks when, and the count of prepared segments that cross a speaker change."""

import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf

from speechbrain_ssrl.data.minivox_archive import (
    FORMATS,
    ArchiveConfig,
    build_archive,
    count_crossing_segments,
    read_turns,
)


@pytest.fixture(scope="module")
def archive(minivox_ci, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("archive") / "archive")
    cfg = ArchiveConfig(seed=3, two_speaker_fraction=0.5, format_weights=(1, 1, 1, 1))
    return out, build_archive(minivox_ci, out, cfg, progress=False), cfg


def test_archive_holds_every_training_utterance_once_in_declared_formats(minivox_ci, archive):
    out, info, _ = archive
    with open(os.path.join(minivox_ci, "meta.csv"), newline="") as f:
        train = {r["spk_id"] for r in csv.DictReader(f) if r["split"] == "train"}
    with open(os.path.join(minivox_ci, "utterances.csv"), newline="") as f:
        expected = sorted(r["wav"] for r in csv.DictReader(f) if r["spk_id"] in train)
    with open(os.path.join(out, "truth", "turns.csv"), newline="") as f:
        turns = list(csv.DictReader(f))
    assert sorted(t["source"] for t in turns) == expected
    assert info["speakers"] == len(train) and info["utterances"] == len(expected)
    assert info["two_speaker_recordings"] >= 1 and info["speaker_changes"] >= 1
    assert sum(info["formats"].values()) == info["recordings"]
    by_rec = read_turns(out)
    assert len(by_rec) == info["recordings"]
    n_two = 0
    for rec, tt in by_rec.items():
        assert not any(s in rec for s in train), rec  # names reveal no speaker
        ext = os.path.splitext(rec)[1].lstrip(".")
        sfi = sf.info(os.path.join(out, rec))
        fmt = next(k for k, v in FORMATS.items() if v[0] == ext and v[3] == sfi.samplerate)
        assert sfi.channels == FORMATS[fmt][4]
        starts = [t[0] for t in tt]
        assert starts == sorted(starts) and all(b[0] > a[1] for a, b in zip(tt, tt[1:]))  # pauses between turns
        assert tt[-1][1] <= sfi.duration + 0.05
        n_two += len({t[2] for t in tt}) == 2
    assert n_two == info["two_speaker_recordings"]
    # the audio of a 16 kHz wav recording is its utterances at the declared times (pauses at -70 dBFS)
    rec = next(r for r in by_rec if r.endswith(".wav") and sf.info(os.path.join(out, r)).samplerate == 16000)
    x, _ = sf.read(os.path.join(out, rec), dtype="float32")
    first = next(t for t in turns if t["recording"] == rec)
    u, _ = sf.read(os.path.join(minivox_ci, "wav", first["source"]), dtype="float32")
    a = int(round(float(first["start"]) * 16000))
    assert np.max(np.abs(x[a: a + u.size] - u)) < 2e-4  # 16-bit rounding
    assert np.sqrt(np.mean(x[: int(0.4 * 16000)] ** 2)) < 10 ** (-60 / 20)
    assert os.path.isdir(os.path.join(out, "noise")) and os.path.isdir(os.path.join(out, "rir"))


def test_archive_with_same_settings_is_left_as_it_is(minivox_ci, archive):
    out, info, cfg = archive
    stamp = os.path.getmtime(os.path.join(out, "truth", "turns.csv"))
    assert build_archive(minivox_ci, out, cfg, progress=False) == info
    assert os.path.getmtime(os.path.join(out, "truth", "turns.csv")) == stamp


def test_crossing_segments_counted_against_the_turns(tmp_path):
    (tmp_path / "truth").mkdir()
    with open(tmp_path / "truth" / "turns.csv", "w") as f:
        f.write("recording,start,stop,spk_id,source\n")
        f.write("recordings/a/ep_0.flac,0.5,3.0,s1,u1\nrecordings/a/ep_0.flac,3.2,6.0,s2,u2\n")
        f.write("recordings/a/ep_0.flac,7.0,9.0,s2,u3\nrecordings/b/ep_1.mp3,0.5,4.0,s3,u4\n")
    sr = 16000
    rows = [
        ("recordings--a--ep_0.flac--00000", 0.4, 2.9),  # s1 only
        ("recordings--a--ep_0.flac--00001", 0.5, 5.0),  # s1 and s2: crosses the change at 3.1 s
        ("recordings--a--ep_0.flac--00002", 2.98, 6.0),  # 0.02 s of s1 (below the tolerance) + s2
        ("recordings--a--ep_0.flac--00003", 6.5, 9.0),  # s2
        ("recordings--b--ep_1.mp3--00000", 0.5, 4.0),  # s3
        ("recordings--c--ep_9.wav--00000", 0.0, 2.0),  # not in the truth file
    ]
    csv_path = tmp_path / "train.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav", "start", "stop", "spk_id"])
        for uid, a, b in rows:
            w.writerow([uid, b - a, "x.wav", int(a * sr), int(b * sr), ""])
    got = count_crossing_segments(str(csv_path), str(tmp_path))
    assert got["segments"] == 6 and got["crossing"] == 1 and got["unmatched"] == 1
    assert got["speakers_found"] == 3 and got["segments_per_speaker_min"] == 1
    assert got["crossing_seconds_fraction"] == pytest.approx(4.5 / (2.5 + 4.5 + 3.02 + 2.5 + 3.5 + 2.0), abs=1e-4)
    json.dumps(got)  # plain Python values


def test_label_quality_of_a_run_against_segment_speakers(tmp_path):
    import torch

    from speechbrain_ssrl.data.minivox_archive import run_label_quality, segment_speakers

    (tmp_path / "truth").mkdir()
    with open(tmp_path / "truth" / "turns.csv", "w") as f:
        f.write("recording,start,stop,spk_id,source\n")
        for k in range(6):  # recording r/ep.wav: s1 s1 s2 s2 s3 s3, 2 s each with 1 s pauses
            f.write(f"r/ep.wav,{3 * k},{3 * k + 2},s{k // 2 + 1},u{k}\n")
    run = tmp_path / "run"
    (run / "save" / "CKPT+1").mkdir(parents=True)
    (run / "initial_clustering").mkdir()
    with open(run / "save" / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav", "start", "stop", "spk_id"])
        for k in range(6):
            w.writerow([f"r--ep.wav--{k:05d}", 2.0, "x.wav", 3 * k * 16000, (3 * k + 2) * 16000, ""])
        w.writerow(["r--ep.wav--00006", 1.0, "x.wav", 18 * 16000, 19 * 16000, ""])  # silence only: left out
    assert segment_speakers(str(run / "save" / "train.csv"), str(tmp_path)) == ["s1", "s1", "s2", "s2", "s3", "s3", None]
    torch.save({"labels": torch.tensor([0, 0, 1, 1, 2, 2, 2])}, run / "initial_clustering" / "initial_clustering.pt")
    torch.save({"labels": torch.tensor([0, 0, 0, 0, 2, 2, 0])}, run / "save" / "CKPT+1" / "pseudo_labels.ckpt")
    q = run_label_quality(str(run), str(tmp_path))
    assert q["start"]["nmi"] == pytest.approx(1.0) and q["start"]["clusters"] == 3
    assert q["end"]["nmi"] < 1.0 and q["end"]["purity"] == pytest.approx(4 / 6, abs=1e-4) and q["end"]["clusters"] == 2
