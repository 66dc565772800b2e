"""prepare_folder (speechbrain_ssrl.data.folder): any folder of recordings or a user CSV -> train.csv.

Formats and rates (flac 44.1 kHz stereo, mp3, ogg, m4a, 8 kHz wav) are converted once to 16 kHz mono;
segments respect their bounds and skip silences; a CSV without a speaker column; bad files are listed;
a folder without usable audio is refused in one line; a second run redoes nothing; many tiny files are
prepared by worker processes; a 30-minute file is segmented in bounded memory.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from speechbrain_ssrl.data import folder as fp
from speechbrain_ssrl.data.views import read_checked
from speechbrain_ssrl.data.voxceleb import CSV_HEADER, SKIPPED_FILE

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def talk(sr, pattern, channels=1, seed=0):
    """A 'recording': (kind, seconds) pieces, kind 's' = voiced speech-like tone bursts, '_' = near silence."""
    rng = np.random.default_rng(seed)
    out = []
    for kind, sec in pattern:
        n = int(round(sec * sr))
        t = np.arange(n) / sr
        if kind == "s":
            x = 0.3 * np.sin(2 * np.pi * (120 + 40 * seed) * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.02 * rng.normal(size=n)
        else:
            x = 3e-4 * rng.normal(size=n)
        out.append(x)
    x = np.concatenate(out).astype(np.float32)
    return np.stack([x] * channels, 1) if channels > 1 else x


PATTERN = [("s", 3.0), ("_", 1.0), ("s", 4.0), ("_", 1.0), ("s", 2.5)]  # 3 speech regions, 11.5 s


def rows_of(path):
    with open(path, newline="") as f:
        r = csv.reader(f)
        header = next(r)
        return header, [dict(zip(header, x)) for x in r]


def ffmpeg(src, dst, *args):
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", src, *args, dst], check=True)


def prep(data, tmp_path, **kw):
    kw.setdefault("cache_folder", str(tmp_path / "cache"))
    kw.setdefault("jobs", 1)
    kw.setdefault("progress", False)
    return fp.prepare_folder(str(data), str(tmp_path / kw.pop("save", "save")), **kw)


# ------------------------------------------------------------------------------------ formats and rates
@needs_ffmpeg
def test_every_format_and_rate_becomes_16k_mono(tmp_path):
    data = tmp_path / "archive"
    (data / "deep" / "er").mkdir(parents=True)
    sf.write(data / "deep" / "stereo44k.flac", talk(44100, PATTERN, channels=2, seed=1), 44100)
    sf.write(data / "phone8k.wav", talk(8000, PATTERN, seed=2), 8000)
    sf.write(data / "plain16k.wav", talk(16000, PATTERN, seed=3), 16000, subtype="PCM_16")
    src = str(tmp_path / "src22k.wav")
    sf.write(src, talk(22050, PATTERN, seed=4), 22050)
    ffmpeg(src, str(data / "deep" / "er" / "talk.mp3"))
    ffmpeg(src, str(data / "talk.ogg"), "-c:a", "libvorbis")
    ffmpeg(src, str(data / "talk.m4a"), "-c:a", "aac")
    (data / "readme.txt").write_text("not audio")
    out = prep(data, tmp_path)
    header, rows = rows_of(out["train"])
    assert header == CSV_HEADER
    by_src = {}
    for r in rows:
        by_src.setdefault(r["ID"].rsplit("--", 1)[0], []).append(r)
    assert sorted(by_src) == ["deep--er--talk.mp3", "deep--stereo44k.flac", "phone8k.wav", "plain16k.wav", "talk.m4a", "talk.ogg"]
    for name, rs in by_src.items():
        assert len(rs) == 3, (name, [(r["start"], r["stop"]) for r in rs])  # the three speech regions
        for r in rs:
            assert r["spk_id"] == ""
            info = sf.info(r["wav"])
            assert (info.samplerate, info.channels) == (16000, 1), name
            wav = read_checked(r["wav"], int(r["start"]), int(r["stop"]), 16000)
            assert abs(len(wav) / 16000 - float(r["duration"])) < 1e-3
        lens = sorted(float(r["duration"]) for r in rs)  # 2.5, 3 and 4 s of speech, give or take a frame
        assert np.allclose(lens, [2.5, 3.0, 4.0], atol=0.1), (name, lens)
    assert by_src["plain16k.wav"][0]["wav"] == str(data / "plain16k.wav")  # 16 kHz mono wav: used in place
    with open(tmp_path / "save" / fp.CONVERSIONS_FILE) as f:
        conv = list(csv.DictReader(f, delimiter="\t"))
    assert sorted(os.path.basename(c["source"]) for c in conv) == ["phone8k.wav", "stereo44k.flac", "talk.m4a", "talk.mp3", "talk.ogg"]
    what = {os.path.basename(c["source"]): c["what"] for c in conv}
    assert what["stereo44k.flac"].startswith("44100 Hz, 2 channels")
    assert what["phone8k.wav"].startswith("8000 Hz") and "mp3" in what["talk.mp3"]
    assert all(c["converted"].startswith(str(tmp_path / "cache")) for c in conv)
    log = (tmp_path / "save" / fp.LOG_FILE).read_text()
    assert "5 file(s) converted to 16000 Hz mono wav with ffmpeg" in log and "1 x 44100 Hz, 2 channels" in log
    # the 8 kHz recording's content survives the conversion: same tone, 16 kHz now
    r = by_src["phone8k.wav"][0]
    x = read_checked(r["wav"], int(r["start"]), int(r["stop"])).numpy()
    peak = np.argmax(np.abs(np.fft.rfft(x))) * 16000 / len(x)
    assert abs(peak - 200.0) < 2.0


# ------------------------------------------------------------------------------------ segmentation
def test_segments_respect_bounds_and_skip_silences(tmp_path):
    # 1 s speech (too short), then a 30.15 s region with a 0.15 s pause (kept inside) at 8.5 s, 0.8 s silence, 5 s
    pattern = [("_", 0.5), ("s", 1.0), ("_", 1.0), ("s", 6.0), ("_", 0.15), ("s", 24.0), ("_", 0.8), ("s", 5.0), ("_", 0.7)]
    data = tmp_path / "d"
    data.mkdir()
    sf.write(data / "long.wav", talk(16000, pattern), 16000)
    cfg = fp.SegmentConfig(min_seconds=2.0, max_seconds=12.0)
    out = prep(data, tmp_path, cfg=cfg)
    _, rows = rows_of(out["train"])
    segs = [(int(r["start"]) / 16000, int(r["stop"]) / 16000) for r in rows]
    lens = [b - a for a, b in segs]
    assert all(2.0 <= x <= 12.0 for x in lens), lens
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(segs, segs[1:]))  # ordered, no overlap
    for a, b in segs:  # no segment covers a silence longer than min_silence
        assert not any(a < s0 + 0.1 and b > s1 - 0.1 for s0, s1 in [(1.5, 2.5), (32.65, 33.45)])
    long_region = [(a, b) for a, b in segs if b <= 33.0]
    assert abs(long_region[0][0] - 2.5) < 0.05 and abs(long_region[-1][1] - 32.65) < 0.05
    assert all(abs(b1 - a2) < 1e-9 for (_, b1), (a2, _) in zip(long_region, long_region[1:]))  # cut, nothing lost
    assert 8.45 <= long_region[0][1] <= 8.7  # the first cut is in the short pause, not at an equal split (12.55 s)
    assert len(segs) == len(long_region) + 1 and abs(lens[-1] - 5.0) < 0.05  # the 1 s burst is dropped


def test_segment_bounds_settings():
    e = np.full(1000, -20.0, np.float32)  # 20 s of even speech at 20 ms frames
    segs = fp.speech_segments(e, 320, 1000 * 320, 16000, fp.SegmentConfig(min_seconds=5.0, max_seconds=6.0))
    assert [(b - a) / 16000 for a, b in segs] == [5.0, 5.0, 5.0, 5.0]  # no quiet moment: an equal split
    e2 = e.copy()
    e2[300:305] = -40.0  # a 0.1 s dip at 6 s, too short for a pause
    segs = fp.speech_segments(e2, 320, 1000 * 320, 16000, fp.SegmentConfig(min_seconds=2.0, max_seconds=12.0))
    assert [(a / 16000, b / 16000) for a, b in segs][0] == (0.0, pytest.approx(6.04, abs=0.05))  # cut in the dip
    segs = fp.speech_segments(e, 320, 1000 * 320, 16000, fp.SegmentConfig(min_seconds=5.5, max_seconds=6.0))
    assert [(b - a) / 16000 for a, b in segs] == [6.0, 6.0, 6.0]  # no cut fits 5.5-6 s twice in 8 s: the remainder dropped
    assert fp.speech_segments(np.full(50, -90.0, np.float32), 320, 16000, 16000, fp.SegmentConfig()) == []
    with pytest.raises(ValueError, match="segment_max_seconds=1.0 is below segment_min_seconds=2.0"):
        fp.SegmentConfig(min_seconds=2.0, max_seconds=1.0).check()


def test_no_segmentation_keeps_one_row_per_file(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    sf.write(data / "a.wav", talk(16000, PATTERN), 16000)
    out = prep(data, tmp_path, cfg=fp.SegmentConfig(segment=False))
    _, rows = rows_of(out["train"])
    assert [(r["ID"], r["start"], r["stop"]) for r in rows] == [("a.wav", "0", str(int(11.5 * 16000)))]


# ------------------------------------------------------------------------------------ CSV input
def test_csv_without_speaker_column(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "meeting.wav", talk(16000, PATTERN + PATTERN), 16000)  # 23 s
    sf.write(audio / "call.flac", talk(16000, PATTERN, seed=2), 16000)
    lst = tmp_path / "list.csv"
    lst.write_text("ID,wav,start,stop\nm1,audio/meeting.wav,0,11.5\nm2,audio/meeting.wav,11.5,\ncall,%s,,\n" % (audio / "call.flac"))
    out = prep(lst, tmp_path, data_format="csv")
    _, rows = rows_of(out["train"])
    assert {r["spk_id"] for r in rows} == {""}
    ids = [r["ID"] for r in rows]
    assert len(ids) == len(set(ids)) == 9 and {i.rsplit("--", 1)[0] for i in ids} == {"m1", "m2", "call"}
    m2 = [r for r in rows if r["ID"].startswith("m2--")]
    assert all(int(r["start"]) >= 11.5 * 16000 for r in m2)  # within the row's range
    assert all(r["wav"] == str(audio / "meeting.wav") for r in rows if r["ID"].startswith("m"))
    # a 44.1 kHz recording named by two CSVs with other ranges is converted once
    sf.write(audio / "talk44k.wav", talk(44100, PATTERN + PATTERN, seed=3), 44100)
    for k, ranges in enumerate(([(0, 11.5)], [(0, 11.5), (11.5, None)])):
        lst_k = tmp_path / f"ranges{k}.csv"
        lst_k.write_text("ID,wav,start,stop\n" + "".join(f"r{j},audio/talk44k.wav,{a},{'' if b is None else b}\n" for j, (a, b) in enumerate(ranges)))
        prep(lst_k, tmp_path, data_format="csv", save=f"save_r{k}")
    assert len(list((tmp_path / "cache" / "wav16k").rglob("talk44k-*.wav"))) == 1
    # the same CSV with a speaker column: carried to every segment (diagnostics only)
    lst2 = tmp_path / "list2.csv"
    lst2.write_text("ID,wav,speaker\ncall,%s,alice\n" % (audio / "call.flac"))
    _, rows2 = rows_of(prep(lst2, tmp_path, data_format="csv", save="save2")["train"])
    assert [r["spk_id"] for r in rows2] == ["alice"] * 3


@pytest.mark.parametrize(
    "text, match",
    [
        ("ID,path\na,x.wav\n", r"lacks the column\(s\) \['wav'\]"),
        ("ID,wav\na,x.wav\na,y.wav\n", r"line 3: ID 'a' is used on line 2 too"),
        ("ID,wav,start,stop\na,x.wav,5,2\n", r"line 2: stop=2 s is not after start=5 s"),
        ("ID,wav,start\na,x.wav,soon\n", r"line 2: start='soon' is not a number"),
    ],
)
def test_csv_errors_name_the_line(tmp_path, text, match):
    lst = tmp_path / "bad.csv"
    lst.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        prep(lst, tmp_path, data_format="csv")
    assert str(lst) in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ bad files, refusals
def test_bad_files_are_skipped_and_listed(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    sf.write(data / "good.wav", talk(16000, PATTERN), 16000)
    (data / "empty.wav").write_bytes(b"")
    (data / "junk.mp3").write_bytes(b"\x00garbage" * 50)
    nan = talk(16000, PATTERN)
    nan[1000] = np.nan
    sf.write(data / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(data / "silent.wav", np.zeros(16000 * 5, np.float32), 16000)
    sf.write(data / "short.wav", talk(16000, [("s", 1.0)]), 16000)
    out = prep(data, tmp_path)
    _, rows = rows_of(out["train"])
    assert {r["ID"].rsplit("--", 1)[0] for r in rows} == {"good.wav"}
    with open(tmp_path / "save" / SKIPPED_FILE) as f:
        skipped = dict(line.rstrip("\n").split("\t") for line in f)
    assert set(map(os.path.basename, skipped)) == {"empty.wav", "junk.mp3", "nan.wav", "silent.wav", "short.wav"}
    why = {os.path.basename(k): v for k, v in skipped.items()}
    assert "empty file" in why["empty.wav"] and "non-finite" in why["nan.wav"]
    assert "no speech segment of at least 2 s" in why["silent.wav"] and "no speech segment" in why["short.wav"]


@pytest.mark.parametrize("content", ["nothing", "text", "bad audio"])
def test_folder_without_usable_audio_is_refused_in_one_line(tmp_path, content):
    data = tmp_path / "my recordings"
    data.mkdir()
    if content == "text":
        (data / "notes.txt").write_text("x")
    elif content == "bad audio":
        (data / "a.wav").write_bytes(b"RIFF0000nonsense")
        sf.write(data / "b.wav", np.zeros(32000, np.float32), 16000)
    with pytest.raises(fp.NoUsableAudioError) as e:
        prep(data, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(data) in msg and "Fix:" in msg
    assert not (tmp_path / "save" / "train.csv").exists()


def test_missing_folder_and_csv_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder .*nowhere does not exist.*Fix"):
        prep(tmp_path / "nowhere", tmp_path)
    with pytest.raises(FileNotFoundError, match="CSV .*none.csv does not exist.*Fix"):
        prep(tmp_path / "none.csv", tmp_path, data_format="csv")


def test_hidden_excluded_and_linked_folders(tmp_path):
    data = tmp_path / "d"
    (data / ".hidden").mkdir(parents=True)
    (data / "noise").mkdir()
    sf.write(data / "a.wav", talk(16000, PATTERN), 16000)
    sf.write(data / ".hidden" / "b.wav", talk(16000, PATTERN), 16000)
    sf.write(data / "noise" / "n.wav", talk(16000, PATTERN), 16000)
    os.symlink(str(data), str(data / "loop"))
    skipped = []
    files, _ = fp.find_audio_files(str(data), exclude=[str(data / "noise")], skipped=skipped)
    assert files == [str(data / "a.wav")]
    assert any("symbolic link loop" in why for _, why in skipped)


# ------------------------------------------------------------------------------------ resume, parallel
@needs_ffmpeg
def test_second_run_redoes_nothing(tmp_path, monkeypatch):
    data = tmp_path / "d"
    data.mkdir()
    for i in range(3):
        sf.write(data / f"r{i}.flac", talk(22050, PATTERN, seed=i), 22050)
    first = rows_of(prep(data, tmp_path)["train"])
    calls = []
    real = fp._process_source
    monkeypatch.setattr(fp, "_process_source", lambda t: calls.append(t["path"]) or real(t))
    # another save folder (e.g. the SSRL stage after DINO): the journal and the converted audio are reused
    assert rows_of(prep(data, tmp_path, save="save_ssrl")["train"]) == first and calls == []
    # an interrupted run: the journal lost its last record; only that file is redone
    journal = next((tmp_path / "cache").glob("segments_*.jsonl"))
    lines = journal.read_text().splitlines(True)
    journal.write_text("".join(lines[:-1]) + lines[-1][:20])  # a torn last line
    assert rows_of(prep(data, tmp_path, save="save3")["train"]) == first and len(calls) == 1
    # a changed source is prepared again; the same save folder with the same options is left as it is
    sf.write(data / "r0.flac", talk(22050, PATTERN[:3], seed=0), 22050)
    assert len(rows_of(prep(data, tmp_path, save="save4")["train"])[1]) == len(first[1]) - 1
    opts = json.loads((tmp_path / "save4" / fp.OPT_FILE).read_text())
    assert opts["data_format"] == "folder" and opts["segments"]["max_seconds"] == 12.0
    calls.clear()
    prep(data, tmp_path, save="save4")
    assert calls == []


def test_parallel_preparation_of_many_tiny_files(tmp_path):
    data = tmp_path / "many"
    rng = np.random.default_rng(0)
    tone = talk(16000, [("s", 2.2)])
    for i in range(400):
        d = data / f"spk{i % 7}" / f"s{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / f"{i:04d}.wav", tone * rng.uniform(0.5, 1.0), 16000, subtype="PCM_16")
    serial = rows_of(prep(data, tmp_path, jobs=1, cache_folder=str(tmp_path / "c1"), save="s1")["train"])
    parallel = rows_of(prep(data, tmp_path, jobs=2, cache_folder=str(tmp_path / "c2"), save="s2")["train"])
    assert parallel == serial and len(serial[1]) == 400  # same rows, same order, whatever the workers


def test_thirty_minute_file_in_bounded_memory(tmp_path):
    """Peak RSS of segmenting a 30-minute 16 kHz file (57.6 MB as int16, 115 MB as float32) stays small."""
    script = textwrap.dedent(
        """
        import resource, sys, numpy as np, soundfile as sf
        from speechbrain_ssrl.data import folder as fp
        path = sys.argv[1]
        rng = np.random.default_rng(0)
        with sf.SoundFile(path, "w", 16000, 1, "PCM_16") as f:  # written in 10 s blocks
            for k in range(180):
                t = np.arange(160000) / 16000
                x = 0.3 * np.sin(2 * np.pi * 150 * t) * (t % 5 < 4) + 1e-3 * rng.normal(size=t.size)
                f.write(x.astype(np.float32))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        segs, n, _ = fp.segment_file(path, 16000, fp.SegmentConfig())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(n, len(segs), base, peak)
        """
    )
    path = str(tmp_path / "thirty.wav")
    res = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    n, n_segs, base, peak = map(int, res.stdout.split())
    assert n == 30 * 60 * 16000
    assert n_segs == 360  # one 4 s burst every 5 s
    grown_mb = (peak - base) / 1024
    assert grown_mb < 40, f"segmenting grew the peak RSS by {grown_mb:.1f} MB"
