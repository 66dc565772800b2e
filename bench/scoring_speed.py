"""Time and peak memory of ``eer`` + ``min_dcf`` on a VoxCeleb1-E-sized trial list (579,818 trials).

    python bench/scoring_speed.py [--threads 1 2] [--trials 579818]

Each thread count runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own; the increase
over the RSS after importing torch is the metrics' own peak memory. Prints a table and writes
bench/out/scoring_speed.json. "separate" = eer + min_dcf(0.01) + min_dcf(0.05) (three sorts);
"combined" = eer_and_min_dcf (one sort, what evaluate.py uses).
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import resource, sys, time, json
import torch
torch.set_num_threads(int(sys.argv[1]))
n = int(sys.argv[2])
from speechbrain_ssrl.scoring import eer, eer_and_min_dcf, min_dcf
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
g = torch.Generator().manual_seed(0)
n_pos = n // 2  # VoxCeleb1-E is balanced (289,921 targets)
pos = torch.randn(n_pos, generator=g) * 0.1 + 0.45
neg = torch.randn(n - n_pos, generator=g) * 0.1 + 0.1
eer(pos[:100], neg[:100]); min_dcf(pos[:100], neg[:100])  # warm-up
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times, times_c = [], []
for _ in range(3):
    t0 = time.perf_counter()
    e = eer(pos, neg)
    d1 = min_dcf(pos, neg, 0.01)
    d5 = min_dcf(pos, neg, 0.05)
    times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    c = eer_and_min_dcf(pos, neg, (0.01, 0.05))
    times_c.append(time.perf_counter() - t0)
assert c["eer"] == e[0] and c["min_dcf_0.01"] == d1[0] and c["min_dcf_0.05"] == d5[0]
rss2 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"threads": int(sys.argv[1]), "n_trials": n, "eer": e[0], "min_dcf_0.01": d1[0],
                  "min_dcf_0.05": d5[0], "best_s": min(times), "mean_s": sum(times) / len(times),
                  "combined_best_s": min(times_c), "combined_mean_s": sum(times_c) / len(times_c),
                  "peak_rss_mb": rss2 / 1024, "rss_before_mb": rss1 / 1024,
                  "peak_increase_mb": (rss2 - rss1) / 1024}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--trials", type=int, default=579818)
    args = ap.parse_args()
    rows = []
    for t in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t))
        out = subprocess.run([sys.executable, "-c", CHILD, str(t), str(args.trials)], env=env,
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'threads':>7} {'trials':>8} {'separate s (best/mean of 3)':>28} {'combined s (best/mean)':>24} "
          f"{'peak RSS MB':>12} {'+MB over import':>16}")
    for r in rows:
        print(f"{r['threads']:>7} {r['n_trials']:>8} {r['best_s']:>13.3f} / {r['mean_s']:<12.3f} "
              f"{r['combined_best_s']:>11.3f} / {r['combined_mean_s']:<10.3f} "
              f"{r['peak_rss_mb']:>12.0f} {r['peak_increase_mb']:>16.0f}")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "scoring_speed.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
