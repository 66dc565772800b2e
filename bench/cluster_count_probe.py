"""How many clusters does a representation support? An offline probe of issue #13's cluster-count criterion.

Issue #13 asks that SSRL's cluster count fall from K0 toward the true speaker count while the label NMI rises. The
MiniVox re-clustering loop keeps K at the active count (198-200 clusters for 116 speakers); merging clusters would
be the lever. This probe asks, for a teacher's embeddings of the training set (training labels only, no test
trials), what the count does to label quality before any loop is built:

* ``km<k>``: spherical k-means (``clustering.kmeans``, seeds 0..``--seeds``-1, mean over seeds) into k clusters,
  for each k of ``--k`` (the true speaker count among them);
* ``merge_<linkage>_<tau>``: k-means into ``--k0`` clusters, then agglomerative merging of the centroids
  (scikit-learn ``AgglomerativeClustering``, cosine, ``--linkage``) until no two groups are closer than cosine tau:
  tau = ``own_mean`` (label-free: the mean cosine of a member to its own centroid, "two centroids closer than a
  member is to its own centroid cannot be told apart"), and each fixed tau of ``--tau``;
* ``spectral<k0>_nn<n>``: spectral clustering of the embeddings' n-nearest-neighbour graph into ``--k0``
  (``spectral_clustering.spectral_clustering``, the recipe's ``cluster_method: spectral``; seeds 0..``--seeds``-1),
  for each n of ``--spectral_neighbors``; ``balanced<k0>``: the K0 k-means centroids, then 5 rounds of a
  Sinkhorn-balanced assignment (``online_clustering.sinkhorn_assign``, epsilon 0.05, 3 iterations) and the new
  cluster means (a size-balanced k-means);
* ``graphmerge<n>_nn<nn>`` (``--graph_merge``): the ``--k0`` spectral clusters, then the n pairs of clusters most
  connected in the nn-NN graph merged (``spectral_clustering.cluster_connectivity``), with the share of merged pairs
  whose clusters hold the same majority speaker; ``truth_graphmerge<n>_nn<nn>``: the same n merges of the true
  partition (what the rule does to correct labels).

Every row reports NMI, purity, the cluster count and the most true speakers whose majority cluster is one cluster
(``label_diagnostics.majority_homes``, the ``max speakers / home`` of the recipe README's tables).

    python bench/cluster_count_probe.py --train_csv <prepared train.csv> --teacher ssrl=<run folder with pretrained/> \\
        --teacher dino=<embeddings.pt> --out probe.json

A teacher is a run folder (its ``pretrained/`` model embeds the training set as the initial clustering does: full
utterances up to ``--max_seconds``) or a ``.pt`` file of embeddings in the CSV's row order (``--save_embeddings``
writes them, so a second probe need not embed again).

Measured (#13; MiniVox demo, 2,320 training utterances of 116 speakers, corpus seeds 0 and 1, 2-core CPU;
``bench/results/cluster_count_probe_minivox_demo.json``). NMI (mean of 3 k-means seeds) and, below, the max speakers
per home; DINO = the 4-epoch stage 1 of each corpus' demo chain, SSRL = its MiniVox-default run (seed 1986):

    teacher        km58   km87   km116  km150  km200  km300   merge average own_mean (k)   merge complete 0.9 (k)
    seed 0 DINO    0.514  0.547  0.567  0.590  0.611  0.641   0.605 (191)                  0.556 (115)
    seed 0 SSRL    0.588  0.614  0.629  0.641  0.659  0.680   0.659 (194)                  0.614 (105)
    seed 1 DINO    0.514  0.546  0.563  0.587  0.606  0.638   0.601 (190)                  0.556 (114)
    seed 1 SSRL    0.590  0.613  0.628  0.640  0.654  0.676   0.654 (193)                  0.608 (91)
    max / home     8-10   6-7    5.3-6  4.3-5.7 3.7-4.7 3.3-4.3  5.7-10.3                  10-14.7

On both corpus seeds and for DINO and SSRL alike, NMI *falls* with fewer clusters (k-means at the true count, 116, is
0.03-0.04 below k-means at K0 = 200) and rises with more (300), and the most speakers sharing one home falls as k
grows: this representation splits a speaker more readily than it separates two. Every merge of the K0 centroids
lowers NMI and purity and raises the speakers per home (the label-free threshold ``own_mean``, 0.97-0.98, merges
6-10 clusters and already doubles it). At this representation strength a merging re-clustering would trade NMI for
cluster count: the count criterion of #13 (fall toward the true speakers) and its NMI and speakers-per-home criteria
pull apart, and the MiniVox re-clustering keeps K at the active count.

Spectral and size-balanced rows (sixteenth session, ``bench/results/cluster_count_probe_spectral_minivox_demo.json``;
the embeddings of make demo's 8-epoch C=64 DINO and of an SSRL run at the k-means defaults, per corpus seed; NMI, mean
of 3 seeds, and the most speakers per home):

    teacher        km200         km300         spectral nn5  spectral nn10  spectral nn20  balanced200
    seed 0 DINO    0.643 (5.7)   0.675 (3.7)   0.669 (2.0)   0.671 (2.0)    0.662 (2.0)    0.657 (3.0)
    seed 0 SSRL    0.693 (4.0)   0.709 (3.7)   0.710 (3.0)   0.711 (3.0)    0.710 (2.0)    0.695 (3.3)
    seed 1 DINO    0.657 (4.3)   0.687 (3.0)   0.692 (2.0)   0.686 (3.0)    0.677 (2.0)    0.670 (2.7)
    seed 1 SSRL    0.702 (3.7)   0.716 (3.0)   0.720 (2.0)   0.714 (2.0)    0.705 (2.0)    0.702 (4.7)

At the same K0 = 200, spectral clustering of the 10-NN graph beats k-means by 0.013-0.029 NMI and halves the most
speakers sharing one home; a size-balanced k-means gains less. This chose ``cluster_method: spectral`` with 10
neighbours as the candidate (nn10 over nn20 on corpus seed 0; the nn5 rows were added after the choice).

Spectral clustering at other counts and the eigengap (seventeenth session, ``--spectral_k 116,150,250 --eigengap 20``,
``bench/results/cluster_count_probe_spectral_k_minivox_demo.json``; NMI, mean of 2 seeds, and the most speakers per
home; SSRL = a run at the spectral MiniVox defaults, training seed 1986):

    teacher        spectral116   spectral150   spectral200   spectral250   eigengap k (gap / median gap)
    seed 0 DINO    0.630 (4)     0.648 (3)     0.671 (2)     0.687 (2)     24 (0.0085 / 0.0016)
    seed 0 SSRL    0.716 (3)     0.730 (3)     0.745 (2)     0.750 (2)     75 (0.0088 / 0.0017)
    seed 1 DINO    0.651 (4)     0.669 (2)     0.686 (3)     0.699 (2)     88 (0.0075 / 0.0017)
    seed 1 SSRL    0.723 (3)     0.726 (3)     0.735 (2)     0.743 (2)     184 (0.0089 / 0.0019)

Spectral clustering behaves as k-means does: fewer clusters, lower NMI and purity, more speakers per home, for every
teacher, including the SSRL teachers of the spectral defaults. The eigengap heuristic (the largest jump of the
normalised Laplacian's sorted eigenvalues between 20 and 300 clusters) finds no count: its largest jump is about five
median jumps, at 24, 75, 88 or 184 clusters for 116 speakers. Nothing in these embeddings tells the loop how far to
lower K, and lowering it costs labels; the MiniVox re-clusterings keep K0.

Merging by the k-NN graph (nineteenth session, ``--graph_merge 10,20,40,80``,
``bench/results/cluster_count_probe_graph_merge_minivox_demo.json``; corpus seed 0, mean of 2 spectral seeds): spectral
into 200, then the n cluster pairs most connected in the 10-NN graph merged (connectivity: edges between the two / the
smaller total degree, ``spectral_clustering.cluster_connectivity``). Per teacher: NMI after n merges (share of merged
pairs whose clusters hold the same majority speaker, connectivity of the n-th pair); below it, the same n merges of the
TRUE partition (116 speakers): NMI (clusters left, connectivity of the n-th pair):

    teacher        spectral200  merge 10            merge 20            merge 40            merge 80
    DINO           0.668        0.667 (0.60, 0.24)  0.665 (0.35, 0.19)  0.659 (0.30, 0.15)  0.632 (0.20, 0.12)
      true labels  1.000 (116)  0.987 (106, 0.21)   0.972 (96, 0.16)    0.932 (77, 0.12)    0.826 (50, 0.09)
    SSRL 1986      0.756        0.758 (0.70, 0.26)  0.759 (0.60, 0.21)  0.756 (0.42, 0.17)  0.743 (0.36, 0.12)
      true labels  1.000 (116)  0.987 (106, 0.24)   0.974 (96, 0.20)    0.939 (77, 0.14)    0.832 (43, 0.10)
    SSRL 1987      0.751        0.754 (0.80, 0.27)  0.755 (0.65, 0.21)  0.751 (0.53, 0.17)  0.742 (0.39, 0.13)
      true labels  1.000 (116)  0.987 (106, 0.25)   0.974 (96, 0.19)    0.940 (76, 0.14)    0.826 (44, 0.10)
    round 5 1986   0.746        0.748 (0.90, 0.25)  0.748 (0.70, 0.19)  0.747 (0.50, 0.16)  0.732 (0.34, 0.13)
      true labels  1.000 (116)  0.987 (106, 0.23)   0.974 (96, 0.18)    0.940 (77, 0.14)    0.853 (43, 0.10)

For the trained teachers the first 10-20 merges raise NMI a little (+0.002..+0.004) and are mostly right (0.6-0.9), but
the most connected pairs of true speakers (a voice and its pitch-shifted copy among them) reach the same connectivity
(0.18-0.25 at rank 10-20) as the most connected halves of split speakers: no threshold tells them apart, and every merge
of correct labels joins two speakers. ``recluster_merge_connectivity`` (SSRL's re-clusterings) uses this merge; its runs
are in the recipe README (nineteenth session).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch


def eigengap_count(emb: torch.Tensor, n_neighbors: int, k_min: int, k_max: int) -> dict:
    """The eigengap heuristic on the graph that ``spectral_clustering`` partitions (symmetric n-NN connectivity,
    normalised Laplacian, as scikit-learn builds it): the count k in [k_min, k_max] after which the sorted
    eigenvalues jump the most, that jump, and the median jump over the range (a clear gap is many times the median).
    Dense eigenvalues (numpy): refused above 10,000 rows."""
    import numpy as np
    from scipy.sparse.csgraph import laplacian
    from sklearn.neighbors import kneighbors_graph

    n = emb.shape[0]
    if n > 10_000:
        raise SystemExit(f"--eigengap: {n} rows, the dense eigenvalues stop at 10,000; drop --eigengap")
    if not 1 <= k_min < k_max < n:
        raise SystemExit(f"--eigengap: need 1 <= K_MIN ({k_min}) < the largest count probed ({k_max}) < rows ({n})")
    graph = kneighbors_graph(emb.numpy(), min(n_neighbors, n - 1), mode="connectivity", include_self=True)
    lap = laplacian(0.5 * (graph + graph.T), normed=True)
    values = np.sort(np.linalg.eigvalsh(lap.toarray()))[: k_max + 1]
    gaps = np.diff(values)[k_min - 1:]  # gaps[j]: value[k_min + j] - value[k_min + j - 1], i.e. after k_min + j clusters
    j = int(np.argmax(gaps))
    return {"k": k_min + j, "gap": round(float(gaps[j]), 5), "median_gap": round(float(np.median(gaps)), 5)}


def graph_merge(emb: torch.Tensor, labels: torch.Tensor, n_neighbors: int, n_merges: int):
    """Merge the ``n_merges`` cluster pairs most connected in the embeddings' k-NN graph
    (``spectral_clustering.cluster_connectivity``: edges between the two clusters / the smaller total degree).
    Returns the merged labels (0..m-1), the merged pairs (cluster ids of ``labels``) and the connectivity of the
    last pair merged (the threshold that rank stands for; None when no pair of clusters shares an edge)."""
    from speechbrain_ssrl.spectral_clustering import cluster_connectivity, union_pairs

    a, b, conn = cluster_connectivity(emb, labels, n_neighbors)
    pairs = list(zip(a[:n_merges].tolist(), b[:n_merges].tolist()))
    return union_pairs(labels, pairs), pairs, (float(conn[:n_merges][-1]) if n_merges > 0 and len(conn) else None)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train_csv", required=True, help="prepared train.csv with the spk_id column")
    ap.add_argument("--teacher", action="append", required=True,
                    help="name=<run folder with pretrained/> or name=<embeddings .pt in the CSV's row order>")
    ap.add_argument("--k", default="58,87,116,150,200,300", help="comma-separated cluster counts for the k-means sweep")
    ap.add_argument("--k0", type=int, default=200, help="clusters before merging (the MiniVox K0)")
    ap.add_argument("--tau", default="0.9,0.95", help="comma-separated fixed cosine thresholds for merging")
    ap.add_argument("--linkage", default="average,complete", help="comma-separated linkages for merging")
    ap.add_argument("--spectral_neighbors", default="",
                    help="comma-separated neighbour counts for the spectral rows (empty: no spectral rows)")
    ap.add_argument("--spectral_k", default="",
                    help="comma-separated cluster counts for the spectral rows besides --k0 (empty: --k0 only)")
    ap.add_argument("--eigengap", type=int, default=0, metavar="K_MIN",
                    help="> 0: per spectral neighbour count, the eigengap estimate of the cluster count between "
                         "K_MIN and the largest count probed (dense eigenvalues: at most 10,000 rows)")
    ap.add_argument("--balanced", action="store_true", help="add the size-balanced k-means row")
    ap.add_argument("--graph_merge", default="",
                    help="comma-separated merge counts n: per spectral neighbour count, spectral clustering into --k0, "
                         "then the n most k-NN-connected cluster pairs merged (rows graphmerge<n>_nn<nn>), and the "
                         "same merge rule on the true-speaker partition (rows truth_graphmerge<n>_nn<nn>)")
    ap.add_argument("--seeds", type=int, default=3, help="k-means seeds 0..n-1 per row (mean reported)")
    ap.add_argument("--max_seconds", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save_embeddings", default=None, help="folder: write <name>.pt embeddings for a later probe")
    ap.add_argument("--out", required=True, help="JSON file")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from sklearn.cluster import AgglomerativeClustering

    from speechbrain_ssrl.clustering import kmeans
    from speechbrain_ssrl.data.views import true_speaker_ids
    from speechbrain_ssrl.export import load_embed_fn
    from speechbrain_ssrl.initial_clustering import embed_training_set
    from speechbrain_ssrl.label_diagnostics import majority_homes
    from speechbrain_ssrl.metrics import pseudo_label_report
    from speechbrain_ssrl.online_clustering import cluster_means, sinkhorn_assign
    from speechbrain_ssrl.spectral_clustering import spectral_clustering

    truth = true_speaker_ids(a.train_csv)
    if truth is None:
        raise SystemExit(f"{a.train_csv}: no spk_id in every row; the probe needs the true speakers")

    def report(y: torch.Tensor) -> dict:
        r = pseudo_label_report(y, truth)
        homes = torch.bincount(majority_homes(y, truth))
        return {"nmi": r["nmi"], "purity": r["purity"], "clusters": int(torch.unique(y).numel()),
                "max_speakers_per_home": int(homes.max())}

    def mean_of(rows: list) -> dict:
        return {key: round(sum(r[key] for r in rows) / len(rows), 4) for key in rows[0]}

    def counts(text: str) -> list:
        """A comma-separated list of whole numbers (spaces and empty items allowed)."""
        return [int(v) for v in text.split(",") if v.strip()]

    # every option is parsed once, before the teachers; counts are compared as numbers, not as the text written
    spectral_ks = sorted(set(counts(a.spectral_k)) | {a.k0})
    neighbor_counts = counts(a.spectral_neighbors)
    merge_counts = counts(a.graph_merge)
    if merge_counts and not neighbor_counts:
        raise SystemExit("--graph_merge merges spectral clusters: give --spectral_neighbors too")
    km_ks = set(counts(a.k))
    k_max = max(spectral_ks + sorted(km_ks))  # the eigengap's range ends at the largest count probed
    fixed_taus = [(f"{float(t):g}", float(t)) for t in a.tau.split(",")]
    linkages = a.linkage.split(",")
    out = {"train_csv": os.path.abspath(a.train_csv), "true_speakers": int(truth.max()) + 1, "seeds": a.seeds, "results": {}}
    for item in a.teacher:
        tname, src = item.split("=", 1)
        t0 = time.time()
        if src.endswith(".pt"):
            emb = torch.load(src, weights_only=True)
            if emb.shape[0] != truth.numel():
                raise SystemExit(f"{src}: {emb.shape[0]} embeddings, {a.train_csv} has {truth.numel()} rows: "
                                 "not the same training set")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                fn, _ = load_embed_fn(os.path.join(src, "pretrained"), device="cpu", savedir=tmp)
                with torch.no_grad():
                    _, emb = embed_training_set(fn, a.train_csv, max_seconds=a.max_seconds, progress=False)
        emb = torch.nn.functional.normalize(emb.float(), dim=1)
        if a.save_embeddings:
            os.makedirs(a.save_embeddings, exist_ok=True)
            torch.save(emb, os.path.join(a.save_embeddings, f"{tname}.pt"))
        res = {}
        runs = {}  # (k, seed) -> k-means result: the K0 runs of the sweep are the ones merged below
        for k in sorted(km_ks | {a.k0}):
            for s in range(a.seeds):
                runs[k, s] = kmeans(emb, k, seed=s)
            if k in km_ks:
                res[f"km{k}"] = mean_of([report(runs[k, s][1]) for s in range(a.seeds)])
        merged = {}
        own_means = []
        for s in range(a.seeds):
            C, lab = runs[a.k0, s]
            C = torch.nn.functional.normalize(C.float(), dim=1)
            own = float((emb * C[lab]).sum(1).mean())
            own_means.append(own)
            for link in linkages:
                for tag, tau in [("own_mean", own)] + fixed_taus:
                    groups = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage=link,
                                                     distance_threshold=1.0 - tau).fit(C.numpy()).labels_
                    merged.setdefault(f"merge_{link}_{tag}", []).append(report(torch.as_tensor(groups)[lab]))
        res.update({key: mean_of(rows) for key, rows in merged.items()})
        for nn in neighbor_counts:
            spectral = {(k, s): spectral_clustering(emb, k, n_neighbors=nn, seed=s)
                        for k in spectral_ks for s in range(a.seeds)}  # the K0 ones are merged below
            for k in spectral_ks:
                res[f"spectral{k}_nn{nn}"] = mean_of([report(spectral[k, s]) for s in range(a.seeds)])
            if a.eigengap > 0:
                res[f"eigengap_nn{nn}"] = eigengap_count(emb, nn, a.eigengap, k_max)
            for m in merge_counts:
                rows = []
                for s in range(a.seeds):
                    lab = spectral[a.k0, s]
                    merged_lab, pairs, conn = graph_merge(emb, lab, nn, m)
                    # the true speaker each cluster holds most of: a merge is right when both hold the same one
                    home = [int(torch.bincount(truth[lab == c]).argmax()) for c in range(int(lab.max()) + 1)]
                    same = sum(home[p] == home[q] for p, q in pairs) / max(len(pairs), 1)
                    rows.append({**report(merged_lab), "same_speaker_pairs": same,
                                 "connectivity": float("nan") if conn is None else conn})
                res[f"graphmerge{m}_nn{nn}"] = mean_of(rows)
                # the same rule on correct labels (a 0 % bench's start): every merge there joins two true speakers
                truth_lab, _, conn = graph_merge(emb, truth, nn, m)
                res[f"truth_graphmerge{m}_nn{nn}"] = {**report(truth_lab),
                                                      "connectivity": None if conn is None else round(conn, 4)}
        if a.balanced:
            rows = []
            for s in range(a.seeds):
                protos = torch.nn.functional.normalize(runs[a.k0, s][0].float(), dim=1)
                active = torch.ones(a.k0, dtype=torch.bool)
                for _ in range(5):
                    lab = sinkhorn_assign(emb, protos, active, 0.05, 3)
                    protos = torch.nn.functional.normalize(cluster_means(emb, lab, protos), dim=1)
                rows.append(report(lab))
            res[f"balanced{a.k0}"] = mean_of(rows)
        res["own_mean"] = round(sum(own_means) / len(own_means), 4)
        res["seconds"] = round(time.time() - t0, 1)
        out["results"][tname] = res
        print(tname, json.dumps(res), flush=True)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
