"""How far does ``cluster_method: spectral`` scale? Wall time and peak memory of
``speechbrain_ssrl.spectral_clustering.spectral_clustering`` (scikit-learn's spectral clustering of the 10-NN graph,
``assign_labels="cluster_qr"``) against spherical k-means (``clustering.kmeans``) on the same synthetic speaker
embeddings (``bench/kmeans.py``'s ``speaker_data``: speakers with sessions, D = 192), at growing sizes with MiniVox's
ratio of about 11.6 utterances per cluster and 20 per speaker; NMI of both against the synthetic speakers.

    python bench/spectral_scale.py --sizes 2320,10000,25000,50000 --time_limit 240 --out spectral_scale.json

On a machine shared with another job, give ``--threads``: on the 2-core machine, with a training run beside it and the
libraries' default threads (2), the 2,320 x 200 clustering took 1.3-21 s from one run to the next (OpenBLAS threads
contending for the busy cores), with ``--threads 1`` 0.66-0.78 s (the recipe's in-run clusterings of MiniVox took
0.7-0.9 s). Each size runs in a child process under ``--time_limit`` seconds (a size over it is recorded as timed out
and the larger ones are skipped). The recipe refuses N x K > 5e8 (``spectral_clustering.MAX_CELLS``).

Measured: the 16-core host of a GPU session (``bench/results/spectral_scale_16core.json``, default threads): 2,320 x 200
0.64 s, 10,000 x 862 23 s, 25,000 x 2,155 over 110 s; the 2-core CPU machine, idle, ``--threads 2``
(``bench/results/spectral_scale_cpu-2core.json``): 2,320 x 200 0.47 s, 10,000 x 862 31 s (k-means 0.04 / 0.42 s).
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


def one_size(n: int, dim: int, seed: int, queue, threads: int | None = None) -> None:
    if threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(limits=threads)  # OpenBLAS / OpenMP of numpy, scipy and scikit-learn
    from kmeans import speaker_data

    from speechbrain_ssrl.clustering import kmeans
    from speechbrain_ssrl.metrics import pseudo_label_report
    from speechbrain_ssrl.spectral_clustering import spectral_clustering

    k = max(2, round(n / 11.6))
    x, spk = speaker_data(n, dim, max(2, n // 20), seed=seed)[:2]
    row = {"N": n, "K": k, "speakers": int(spk.max()) + 1, "torch_threads": torch.get_num_threads()}
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
    ap.add_argument("--threads", type=int, default=None,
                    help="torch and BLAS threads in each size's process (default: the libraries' own choice)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    out = {"what": "bench/spectral_scale.py", "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "torch_threads": a.threads or torch.get_num_threads(),
           "blas_threads": a.threads or "library default", "rows": []}
    ctx = mp.get_context("spawn")
    for n in [int(v) for v in a.sizes.split(",")]:
        q = ctx.Queue()
        p = ctx.Process(target=one_size, args=(n, a.dim, a.seed, q, a.threads))
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
