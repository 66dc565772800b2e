#!/usr/bin/env python3
"""CPU bench of ``speechbrain_ssrl.data.folder`` (issue #15): the memory of segmenting one long recording
and the time of preparing a folder of many tiny files in parallel.

    python bench/folder_prepare.py memory --minutes 30          # peak RSS: streamed segmenter vs whole-file read
    python bench/folder_prepare.py many --files 100000 --jobs 2  # wall time of prepare_folder, then of a re-run

Writes its figures as JSON to stdout (and --out FILE). Scratch data goes to --work (default a temp folder).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

MEM_CHILD = r"""
import resource, sys, numpy as np, soundfile as sf
from speechbrain_ssrl.data import folder as fp
path, mode = sys.argv[1], sys.argv[2]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if mode == "stream":
    segs, n, _ = fp.segment_file(path, 16000, fp.SegmentConfig())
else:  # the naive way, for comparison: the whole file as float32 in memory
    x = sf.read(path, dtype="float32")[0]
    n, segs = len(x), []
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(n, len(segs), base, peak)
"""


PREP_CHILD = r"""
import resource, sys
from speechbrain_ssrl.data import folder as fp
data, save, cache = sys.argv[1:4]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fp.prepare_folder(data, save, cache_folder=cache, jobs=1, progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(sum(1 for _ in open(save + "/train.csv")) - 1, base, peak, child)
"""


def write_long(path: str, minutes: float, sr: int = 16000, channels: int = 1, fmt: str = "WAV", subtype: str = "PCM_16") -> None:
    """A recording of ``minutes``: a 4 s voiced burst every 5 s, written block by block."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", sr, channels, subtype, format=fmt) as f:
        for _ in range(int(minutes * 6)):
            t = np.arange(10 * sr) / sr
            x = (0.3 * np.sin(2 * np.pi * 150 * t) * (t % 5 < 4) + 1e-3 * rng.normal(size=t.size)).astype(np.float32)
            f.write(np.stack([x] * channels, 1) if channels > 1 else x)


def memory(a) -> dict:
    path = os.path.join(a.work, f"long_{a.minutes:g}min.wav")
    write_long(path, a.minutes)
    out = {"minutes": a.minutes, "file_mb": round(os.path.getsize(path) / 2**20, 1)}
    for mode in ("stream", "whole"):
        t0 = time.time()
        res = subprocess.run([sys.executable, "-c", MEM_CHILD, path, mode], capture_output=True, text=True, check=True)
        n, n_segs, base, peak = map(int, res.stdout.split())
        out[mode] = {"samples": n, "segments": n_segs, "rss_before_mb": round(base / 1024, 1),
                     "peak_rss_mb": round(peak / 1024, 1), "grown_mb": round((peak - base) / 1024, 1),
                     "seconds": round(time.time() - t0, 2)}
    # the whole preparation (ffmpeg conversion + segmentation) of the same length at 44.1 kHz stereo flac
    data = os.path.join(a.work, "flac_folder")
    os.makedirs(data, exist_ok=True)
    write_long(os.path.join(data, "long_44k_stereo.flac"), a.minutes, 44100, 2, "FLAC", "PCM_16")
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", PREP_CHILD, data, os.path.join(a.work, "save"), os.path.join(a.work, "cache")],
                         capture_output=True, text=True, check=True)
    rows, base, peak, child = map(int, res.stdout.split())
    out["prepare_flac_44k_stereo"] = {
        "file_mb": round(os.path.getsize(os.path.join(data, "long_44k_stereo.flac")) / 2**20, 1), "segments": rows,
        "rss_before_mb": round(base / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
        "ffmpeg_peak_rss_mb": round(child / 1024, 1), "seconds": round(time.time() - t0, 2)}
    return out


def many(a) -> dict:
    from speechbrain_ssrl.data import folder as fp

    data = os.path.join(a.work, "many")
    rng = np.random.default_rng(0)
    t = np.arange(int(2.2 * 16000)) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    t0 = time.time()
    for i in range(a.files):
        d = os.path.join(data, f"d{i // 1000:04d}")
        os.makedirs(d, exist_ok=True)
        sf.write(os.path.join(d, f"{i:07d}.wav"), tone * rng.uniform(0.3, 1.0), 16000, subtype="PCM_16")
    made = time.time() - t0
    cache, save = os.path.join(a.work, "cache"), os.path.join(a.work, "save")
    t0 = time.time()
    fp.prepare_folder(data, save, cache_folder=cache, jobs=a.jobs, progress=not a.quiet)
    first = time.time() - t0
    os.remove(os.path.join(save, fp.OPT_FILE))  # a re-run: the journal answers for every file
    t0 = time.time()
    fp.prepare_folder(data, save, cache_folder=cache, jobs=a.jobs, progress=False)
    again = time.time() - t0
    with open(os.path.join(save, "train.csv")) as f:
        rows = sum(1 for _ in f) - 1
    return {"files": a.files, "jobs": a.jobs, "cpus": os.cpu_count(), "rows": rows, "write_files_s": round(made, 1),
            "prepare_s": round(first, 1), "files_per_s": round(a.files / first, 1), "rerun_s": round(again, 1),
            "peak_rss_mb_main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["memory", "many"])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--files", type=int, default=100000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    own = a.work is None
    a.work = a.work or tempfile.mkdtemp(prefix="folder_bench_")
    os.makedirs(a.work, exist_ok=True)
    try:
        res = memory(a) if a.what == "memory" else many(a)
    finally:
        if own:
            shutil.rmtree(a.work, ignore_errors=True)
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
