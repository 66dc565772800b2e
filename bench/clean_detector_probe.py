"""Does the noisy-label GMM find the wrong labels? An offline probe of issue #13 (training labels only, no test trials).

For finished SSRL runs (an output folder with ``pretrained/`` and ``save/CKPT+*``) it embeds the training set with
the run's final teacher (as the initial clustering does: full utterances up to ``--max_seconds``), computes the
teacher's per-utterance loss ``λ = CE(s · cos, label)`` against the run's final labels with its final teacher
classifier (active clusters only, s = ``--scale``), and scores each clean-detector rule of
``speechbrain_ssrl.noisy_labels`` (``p >= 0.5`` called clean) against label correctness (a label is correct when its
cluster's majority true speaker is the utterance's own):

* ``log_loss``: the release's GMM on the log loss (``gmm_space: log_loss``);
* ``loss``: the GMM on the loss itself (``gmm_space: loss``);
* ``*_floor``: the same with ``gmm_noisy_floor: log_k`` (no noisy mode when the noisy component's mean loss is not
  above log K, K = the active clusters).

It also reports ``auc``: how well ``-λ`` itself ranks correct above wrong labels (what any threshold could reach).

    python bench/clean_detector_probe.py --train_csv <prepared train.csv> --run or0=<ssrl run> --run or30=<ssrl run> \
        --out probe.json

Measured (#13; MiniVox demo corpus seed 0, the final state of the recipe README's neighbourhood-vote runs,
``bench/results/clean_detector_probe_minivox_demo.json``): see that file and the recipe README. In short, with 18 %
wrong labels λ ranks them almost perfectly (AUC 0.99) while the release's log-domain GMM calls only 6-43 % of the
labels clean with precision 0.61-1.0 (below the base rate in one run); on the loss itself it finds them (precision
and recall about 0.99). With every label correct, every 2-component fit still calls 58-75 % of them noisy; the
``log_k`` floor then takes all as clean. From k-means labels (43 % correct by the majority rule) λ barely ranks the
labels (AUC 0.67): the teacher has learned the k-means errors, and no rule finds them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
from typing import Dict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from speechbrain_ssrl.noisy_labels import fit_clean_gmm  # noqa: E402


def run_losses(folder: str, csv_path: str, max_seconds: float, scale: float, cache: str = None):
    """(λ, correct, n_active) of a finished SSRL run's final teacher, labels and teacher classifier."""
    from speechbrain_ssrl.export import latest_checkpoint, load_embed_fn
    from speechbrain_ssrl.initial_clustering import embed_training_set
    from speechbrain_ssrl.label_diagnostics import label_correct

    spk = [r["spk_id"] for r in csv.DictReader(open(csv_path))]
    names = sorted(set(spk))
    truth = torch.tensor([names.index(s) for s in spk])
    if cache and os.path.exists(cache):
        emb = torch.load(cache, weights_only=True)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            fn, _ = load_embed_fn(os.path.join(folder, "pretrained"), device="cpu", savedir=tmp)
            with torch.no_grad():
                _, emb = embed_training_set(fn, csv_path, max_seconds=max_seconds, progress=False)
        if cache:
            torch.save(emb, cache)
    emb = torch.nn.functional.normalize(emb.float(), dim=1)
    ckpt = latest_checkpoint(folder)
    if ckpt is None:
        raise SystemExit(f"{folder}/save has no checkpoint: pass a finished SSRL run folder")
    tc = torch.load(os.path.join(ckpt, "teacher_classifier.ckpt"), weights_only=True)
    labels = torch.load(os.path.join(ckpt, "pseudo_labels.ckpt"), weights_only=True)["labels"].long()
    if labels.numel() != emb.shape[0]:
        raise SystemExit(f"{folder}: {labels.numel()} labels but {emb.shape[0]} rows in {csv_path}: wrong --train_csv")
    w = torch.nn.functional.normalize(tc["weight"].float(), dim=1)
    active = tc["active"].bool()
    cos = emb @ w.T
    cos[:, ~active] = -1e4
    lam = torch.nn.functional.cross_entropy(scale * cos, labels, reduction="none").double()
    correct = label_correct(labels, truth)
    return lam, correct, int(active.sum())


def score(p: torch.Tensor, correct: torch.Tensor) -> Dict[str, float]:
    called = p >= 0.5
    return {
        "called_clean": round(float(called.float().mean()), 4),
        "precision": round(float(correct[called].float().mean()), 4) if called.any() else float("nan"),
        "recall": round(float(called[correct].float().mean()), 4) if correct.any() else float("nan"),
        "mean_p_correct": round(float(p[correct].mean()), 4) if correct.any() else float("nan"),
        "mean_p_wrong": round(float(p[~correct].mean()), 4) if (~correct).any() else float("nan"),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train_csv", required=True, help="the runs' prepared train.csv (spk_id column: the truth)")
    ap.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER", help="a finished SSRL run")
    ap.add_argument("--max_seconds", type=float, default=4.0, help="embed at most this much of each utterance")
    ap.add_argument("--scale", type=float, default=32.0, help="AAM scale s of the teacher loss")
    ap.add_argument("--cache", default=None, help="folder for the embeddings (reused when present)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON file")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from sklearn.metrics import roc_auc_score

    results = {"train_csv": a.train_csv, "max_seconds": a.max_seconds, "scale": a.scale, "runs": {}}
    for item in a.run:
        name, folder = item.split("=", 1)
        cache = os.path.join(a.cache, f"emb_{name}.pt") if a.cache else None
        if a.cache:
            os.makedirs(a.cache, exist_ok=True)
        lam, correct, k = run_losses(folder, a.train_csv, a.max_seconds, a.scale, cache)
        row = {"folder": folder, "n": int(lam.numel()), "active_clusters": k,
               "base_rate_correct": round(float(correct.float().mean()), 4),
               "auc": round(float(roc_auc_score(correct.numpy(), -lam.numpy())), 4) if 0 < correct.float().mean() < 1 else float("nan"),
               "loss_quantiles_correct": [round(float(q), 3) for q in np.quantile(lam[correct].numpy(), [0.5, 0.9, 0.99])],
               "loss_median_wrong": round(float(lam[~correct].median()), 3) if (~correct).any() else float("nan")}
        for space in ("log_loss", "loss"):
            for floor in (None, math.log(k)):
                fit = fit_clean_gmm(lam, space=space, noisy_floor=floor)
                key = space + ("_floor" if floor is not None else "")
                row[key] = {**score(fit.p, correct), "gated": fit.gated,
                            "means": [round(m, 3) for m in fit.means], "variances": [round(v, 3) for v in fit.variances]}
        results["runs"][name] = row
        print(name, json.dumps(row), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
