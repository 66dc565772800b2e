"""How far does ``cluster_method: spectral`` scale? Wall time and peak memory of
``speechbrain_ssrl.spectral_clustering.spectral_clustering`` (scikit-learn's spectral clustering of the 10-NN graph,
``assign_labels="cluster_qr"``) against spherical k-means (``clustering.kmeans``) on the same synthetic speaker
embeddings (``bench/kmeans.py``'s ``speaker_data``: speakers with sessions, D = 192), at growing sizes with MiniVox's
ratio of about 11.6 utterances per cluster and 20 per speaker; NMI of both against the synthetic speakers.

    python bench/spectral_scale.py --sizes 2320,10000,25000,50000 --time_limit 240 --out spectral_scale.json

Each size runs in a child process under ``--time_limit`` seconds (a size over it is recorded as timed out and the
larger ones are skipped). The recipe refuses N x K > 5e8 (``spectral_clustering.MAX_CELLS``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def one_size(n: int, dim: int, seed: int, queue) -> None:
    from kmeans import speaker_data

    from speechbrain_ssrl.clustering import kmeans
    from speechbrain_ssrl.metrics import pseudo_label_report
    from speechbrain_ssrl.spectral_clustering import spectral_clustering

    k = max(2, round(n / 11.6))
    x, spk = speaker_data(n, dim, max(2, n // 20), seed=seed)[:2]
    row = {"N": n, "K": k, "speakers": int(spk.max()) + 1}
    t = time.perf_counter()
    lab = kmeans(x, k, seed=seed)[1]
    row["kmeans_seconds"] = round(time.perf_counter() - t, 2)
    row["kmeans_nmi"] = round(pseudo_label_report(lab, spk)["nmi"], 4)
    t = time.perf_counter()
    lab = spectral_clustering(x, k, n_neighbors=10, seed=seed)
    row["spectral_seconds"] = round(time.perf_counter() - t, 2)
    row["spectral_nmi"] = round(pseudo_label_report(lab, spk)["nmi"], 4)
    row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    queue.put(row)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2320,10000,25000,50000")
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time_limit", type=float, default=240.0, help="seconds per size")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    out = {"what": "bench/spectral_scale.py", "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "rows": []}
    ctx = mp.get_context("spawn")
    for n in [int(v) for v in a.sizes.split(",")]:
        q = ctx.Queue()
        p = ctx.Process(target=one_size, args=(n, a.dim, a.seed, q))
        p.start()
        p.join(a.time_limit)
        if p.is_alive():
            p.kill()
            p.join()
            out["rows"].append({"N": n, "timed_out_after_seconds": a.time_limit})
            print(f"N={n}: over {a.time_limit} s, larger sizes skipped", flush=True)
            break
        row = q.get() if not q.empty() else {"N": n, "failed": p.exitcode}
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
