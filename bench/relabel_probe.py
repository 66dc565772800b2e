"""How good can the teacher's relabelling be? An offline probe of issue #13 (training labels only, no test trials).

For a teacher (an exported model) and a set of starting labels of the training utterances (``initial_clustering.pt``
files: k-means, or the label-correction bench's true labels with noise), it embeds the training set once (as the
initial clustering does: full utterances up to ``--max_seconds``) and computes the NMI against the true speakers of:

* ``start``: the labels themselves;
* ``nearest_mean``: the nearest cluster mean of the teacher's embeddings (``relabel_prototypes: mean``);
* ``lloyd_<n>``: n spherical Lloyd steps from those means (``relabel_prototypes: kmeans``, ``relabel_kmeans_iterations``);
* ``knn<k>``: the similarity-weighted majority label of the k nearest training utterances (the neighbourhood rule
  of the noisy-label literature, ``online_clustering.knn_vote``); ``knn<k>_self``: the same with the utterance's
  own label counted as one neighbour; ``knn5_w3.5``: as ``relabel_assignment: knn`` with the yaml's defaults
  (the own label counts as 3.5 neighbours: a row moves only when its 5 neighbours agree on another label);
  ``knn5_w3.5_x6``: that vote applied 6 times (what a fixed teacher would do to the labels over 6 epochs);
* ``recluster``: a fresh k-means (k = the clusters the start uses, seed 0) of the same embeddings, with
  label-free signals a re-clustering gate could read: ``recluster_agreement`` (its NMI to the start) and the
  k-means objective (``reclustering.mean_cosine``) of the start (``objective_start``) and of the re-clustering
  (``objective_recluster``).

``--start`` also takes a run's ``save/CKPT+*/pseudo_labels.ckpt`` (the labels at that checkpoint).

One relabelling from the teacher's embeddings can only reach what its embedding space separates: when every rule
gives labels below ``start``, the loop can only lose label quality with that teacher, whatever its schedule.

    python bench/relabel_probe.py --train_csv <prepared train.csv> --teacher dino=<dino run> --teacher ssrl=<run> \
        --start km=<...>/initial_clustering.pt --start bench30=<...>/initial_clustering.pt --out probe.json

Measured (#13; MiniVox demo corpus seed 0, 2,320 training utterances of 116 speakers, the runs of the recipe
README's MiniVox tables; ``bench/results/relabel_probe_minivox_demo.json``). NMI of the labels each rule gives:

    teacher (its training labels)           start: k-means 0.599   bench 0 % 1.000   bench 30 % 0.759
    DINO                                    best rule  0.603 (lloyd_3)   0.832 (knn5_self)   0.751 (knn5_self)
    SSRL cand, k-means start                0.651 (recluster)            0.827 (knn5_self)   0.762 (knn5_self)
    SSRL cand, 30 % bench                   0.631 (lloyd_30)             0.829 (knn5_self)   0.759 (knn5_self)
    SSRL agree, 0 % bench (kept 0.851)      0.820 (recluster)            0.939 (knn5_self)   0.906 (knn10_self)
    DINO trained 12 epochs, not 4           0.657 (lloyd_10, recluster)  0.985 (knn5_w3.5)   0.778 (knn5_w3.5_x6)
      (label-free; ``bench/results/relabel_probe_minivox_demo_dino12.json``, same starts and CSV; its own
      k-means labels, start 0.665: lloyd_10 0.668, knn5_w3.5 0.665)
  (the rows above the last were measured before ``knn_vote`` moved into the package: their ``knn<k>_self`` gave
  the own label a weight of 1.0, not one mean neighbour cosine (0.96-0.97 here), which wins some ties; with the
  package's rule the DINO-12 row's knn5_self is 0.800 / 0.726 instead of 0.857 / 0.781)

Final labels of the default runs (#13, 12-epoch DINO, `gmm_space: loss`, `gmm_noisy_floor: log_k`; each run's
teacher against its own ``pseudo_labels.ckpt``; ``bench/results/relabel_probe_minivox_demo_final_labels.json``):

    run (its final labels)   start   recluster  lloyd_30  knn5_w3.5   agreement  objective start / recluster
    k-means start            0.668   0.692      0.690     0.671       0.808      0.9748 / 0.9787
    30 % bench               0.864   0.900      0.934     0.894       0.796      0.8326 / 0.9699
    0 % bench                0.993   0.923      0.967     0.992       0.924      0.9699 / 0.9673

A teacher trained on k-means or on 30 %-noisy labels within the demo's 720 steps separates the speakers less well
than the 30 %-noisy labels do (its best rule: 0.76, its own k-means 0.61-0.65): relabelling from it can only lose
label quality. The teacher trained on correct labels removes the same noise (0.759 -> 0.84-0.91 by every rule) and
lifts the k-means labels to 0.82: the relabelling rules work once the representation is strong enough.
The longer DINO (validation EER 28.7 against 34.5 after 4 epochs) moves the k-means labels from 0.599 to 0.657 by
itself (as much as five baseline rounds from the 4-epoch DINO), but still separates speakers less well than the
30 %-noisy labels: only the neighbourhood vote with the row's own label lifts them. ``relabel_assignment: knn``
(k 5, own label 3.5 neighbours) keeps the correct labels (0.985, 0.982 after 6 votes) and removes part of the noise
(0.759 -> 0.778); it cannot correct k-means labels, whose errors the neighbours share (0.665 -> 0.665).
"""

import argparse
import json
import os
import tempfile
import time

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train_csv", required=True, help="prepared train.csv with the spk_id column")
    ap.add_argument("--teacher", action="append", required=True, help="name=<run folder with pretrained/>")
    ap.add_argument("--start", action="append", required=True, help="name=<initial_clustering.pt> (labels of the same CSV)")
    ap.add_argument("--max_seconds", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="JSON file")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from speechbrain_ssrl.clustering import kmeans
    from speechbrain_ssrl.data.views import true_speaker_ids
    from speechbrain_ssrl.export import load_embed_fn
    from speechbrain_ssrl.initial_clustering import embed_training_set
    from speechbrain_ssrl.metrics import pseudo_label_report
    from speechbrain_ssrl.online_clustering import knn_vote, spherical_lloyd
    from speechbrain_ssrl.reclustering import mean_cosine

    truth = true_speaker_ids(a.train_csv)
    if truth is None:
        raise SystemExit(f"{a.train_csv}: no spk_id in every row; the probe needs the true speakers")
    nmi = lambda y: round(float(pseudo_label_report(y, truth)["nmi"]), 4)  # noqa: E731
    starts = {}
    for item in a.start:
        name, path = item.split("=", 1)
        y = torch.load(path, weights_only=False)["labels"].long()
        if y.numel() != truth.numel():
            raise SystemExit(f"{path}: {y.numel()} labels, {a.train_csv} has {truth.numel()} rows: not the same training set")
        starts[name] = y
    out = {"train_csv": os.path.abspath(a.train_csv), "max_seconds": a.max_seconds, "results": {}}
    for item in a.teacher:
        tname, folder = item.split("=", 1)
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            fn, _ = load_embed_fn(os.path.join(folder, "pretrained"), device="cpu", savedir=tmp)
            with torch.no_grad():
                _, emb = embed_training_set(fn, a.train_csv, max_seconds=a.max_seconds, progress=False)
        emb = torch.nn.functional.normalize(emb.float(), dim=1)
        for sname, y in starts.items():
            K = int(y.max()) + 1
            active = torch.ones(K, dtype=torch.bool)
            r = {"start": nmi(y)}
            _, lab = spherical_lloyd(emb, y, torch.zeros(K, emb.shape[1]), active, 1)
            r["nearest_mean"] = nmi(lab)
            for it in (3, 10, 30):
                _, lab = spherical_lloyd(emb, y, torch.zeros(K, emb.shape[1]), active, it)
                r[f"lloyd_{it}"] = nmi(lab)
            for k in (5, 10, 20):
                r[f"knn{k}"] = nmi(knn_vote(emb, y, k, 0.0))
                r[f"knn{k}_self"] = nmi(knn_vote(emb, y, k, 1.0))
            lab = y
            for i in range(6):
                lab = knn_vote(emb, lab, 5, 3.5)
                if i == 0:
                    r["knn5_w3.5"] = nmi(lab)
            r["knn5_w3.5_x6"] = nmi(lab)
            _, km_labels = kmeans(emb, int(torch.unique(y).numel()), seed=0)  # as many clusters as the labels use
            r["recluster"] = nmi(km_labels)
            # label-free signals a re-clustering gate could read (speechbrain_ssrl/reclustering.py)
            r["recluster_agreement"] = round(float(pseudo_label_report(km_labels, y)["nmi"]), 4)
            r["objective_start"] = round(mean_cosine(emb, y), 4)
            r["objective_recluster"] = round(mean_cosine(emb, km_labels), 4)
            out["results"][f"{tname}/{sname}"] = r
            print(tname, sname, json.dumps(r), flush=True)
        out["results"][f"{tname}/embed_seconds"] = round(time.time() - t0, 1)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
