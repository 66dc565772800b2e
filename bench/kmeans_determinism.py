#!/usr/bin/env python
"""Does k-means repeat bit for bit on this device, and do the bounds change its result?

    python bench/kmeans_determinism.py [--n 1092009 --d 512 --k 8000] [--out FILE.json]

``bench/kmeans.py --gpu`` found the runs with and without bounds not bit-identical on an H200 (inertia equal to
3e-10 relative), while the CPU test (tests/unit/test_clustering.py) finds them equal. This probe separates the two
possible causes on the same synthetic speaker-structured set as bench/kmeans.py (``speaker_data``):

* ``_cluster_sums`` (the CSR membership x data product of the centroid update) twice on the same labels;
* ``kmeans`` twice with the same seed and settings, bounds off (run-to-run repeatability);
* ``kmeans`` bounds on vs off (same seed): equal labels / centroids, and the fraction of equal labels.

Writes a JSON (``--out``, default ``$OUT/kmeans_determinism_<device>.json`` or ``bench/out/``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kmeans import slug, speaker_data  # noqa: E402  (bench/kmeans.py: its speaker-structured data, its file names)
from speechbrain_ssrl import clustering as cl  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1092009)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=8000)
    ap.add_argument("--speakers", type=int, default=5994)
    ap.add_argument("--max_iter", type=int, default=30)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = torch.device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    t0 = time.time()
    x, _, data_info = speaker_data(a.n, a.d, a.speakers, seed=0, device=a.device)
    res = {"device": name, "torch": torch.__version__, "n": a.n, "d": a.d, "k": a.k, "speakers": a.speakers, "data": data_info}

    labels = torch.randint(0, a.k, (a.n,), generator=torch.Generator().manual_seed(1)).to(dev)
    s1, c1 = cl._cluster_sums(x, labels, a.k)
    s2, c2 = cl._cluster_sums(x, labels, a.k)
    res["cluster_sums_repeat_equal"] = bool(torch.equal(s1, s2) and torch.equal(c1, c2))
    res["cluster_sums_repeat_max_abs_diff"] = float((s1 - s2).abs().max())

    def run(bounds: bool):
        t = time.time()
        r = cl.kmeans(x, a.k, seed=0, n_iter=a.max_iter, tol=0.0, bounds=bounds)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return r, time.time() - t

    (ra, ta), (rb, tb), (rc, tc) = run(False), run(False), run(True)
    for key, (p, q) in {"no_bounds_repeat": (ra, rb), "bounds_vs_no_bounds": (rc, ra)}.items():
        res[key] = {"labels_equal": bool(torch.equal(p.labels, q.labels)),
                    "centroids_equal": bool(torch.equal(p.centroids, q.centroids)),
                    "labels_agreement": float((p.labels == q.labels).double().mean()),
                    "centroids_max_abs_diff": float((p.centroids - q.centroids).abs().max()),
                    "iterations": [int(p.n_iter), int(q.n_iter)], "inertia": [float(p.inertia), float(q.inertia)]}
    res["seconds"] = {"no_bounds": [round(ta, 3), round(tb, 3)], "bounds": round(tc, 3), "total": round(time.time() - t0, 1)}
    print(json.dumps(res, indent=1))
    out = a.out or os.path.join(os.environ.get("OUT", os.path.join(os.path.dirname(__file__), "out")),
                                f"kmeans_determinism_{slug(name)}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()
