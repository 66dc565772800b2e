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


def write_long(path: str, minutes: float) -> None:
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", 16000, 1, "PCM_16") as f:
        for _ in range(int(minutes * 6)):
            t = np.arange(160000) / 16000
            x = 0.3 * np.sin(2 * np.pi * 150 * t) * (t % 5 < 4) + 1e-3 * rng.normal(size=t.size)
            f.write(x.astype(np.float32))


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
