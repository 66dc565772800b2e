"""Diagnostics of SSRL's pseudo labels (history.csv columns and ``label_merges.csv``).

Label-free (always logged): cluster sizes (min / median / max) and, for the clusters pruned at a label
update, where their members went and how close the dying prototype was to the absorbing one:

* ``pruned_top_share``: mean over the newly pruned clusters of the share of a cluster's members that
  moved to its single most common destination (1.0 = the whole cluster was absorbed by one other);
* ``pruned_proto_cos``: mean cosine between the dying cluster's teacher prototype and that destination's.

A high share with a high cosine is *prototype collapse* (two prototypes drifted together and one took over);
a low share is *rows pushed away* (members scattered to several clusters).

With true speaker ids (diagnostics only, never used by any update): the NMI / purity of the teacher's raw
assignments ŷ, the clean detector's precision / recall / lift against label correctness, and
``label_merges``: for every cluster that is the majority home of more than one true speaker, who shares
it, with pairs of one person (e.g. a MiniVox voice and its pitch-shifted copy) counted apart from pairs of
different persons.
"""

from __future__ import annotations

import csv
import os
from itertools import combinations
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["read_persons", "cluster_size_stats", "pruning_report", "detector_rates", "majority_homes", "label_correct", "label_merges", "write_label_merges"]


def read_persons(data_folder: Optional[str]) -> Dict[str, str]:
    """speaker id → person from ``<root>/meta.csv`` (MiniVox writes one, columns ``spk_id`` and ``person``) of
    every comma-separated root; empty when there is none (every speaker is then its own person)."""
    out: Dict[str, str] = {}
    for root in str(data_folder or "").split(","):
        path = os.path.join(root.strip(), "meta.csv")
        if not root.strip() or not os.path.isfile(path):
            continue
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("spk_id") and row.get("person"):
                    out[row["spk_id"]] = row["person"]
    return out


def cluster_size_stats(labels: torch.Tensor) -> Dict[str, float]:
    """``size_min``, ``size_median``, ``size_max`` of the clusters that own at least one utterance."""
    counts = torch.bincount(torch.as_tensor(labels).long().cpu())
    counts = counts[counts > 0].float()
    if counts.numel() == 0:
        return {}
    return {"size_min": int(counts.min()), "size_median": float(counts.median()), "size_max": int(counts.max())}


def pruning_report(
    old_labels: torch.Tensor, new_labels: torch.Tensor, pruned: torch.Tensor, prototypes: Optional[torch.Tensor] = None
) -> Dict[str, float]:
    """Where the members of the clusters in ``pruned`` went between ``old_labels`` and ``new_labels``.

    Returns ``pruned_top_share`` and (with ``prototypes`` (K, D), the prototypes before the update)
    ``pruned_proto_cos``; empty when nothing was pruned or a pruned cluster had no members.
    """
    pruned = torch.as_tensor(pruned).long().flatten().cpu()
    old, new = torch.as_tensor(old_labels).long().cpu(), torch.as_tensor(new_labels).long().cpu()
    shares, coss = [], []
    protos = F.normalize(prototypes.detach().float().cpu(), dim=1) if prototypes is not None else None
    for c in pruned.tolist():
        dest = new[old == c]
        if dest.numel() == 0:
            continue
        vals, counts = torch.unique(dest, return_counts=True)
        top = int(vals[counts.argmax()])
        shares.append(float(counts.max()) / dest.numel())
        if protos is not None:
            coss.append(float(protos[c] @ protos[top]))
    out: Dict[str, float] = {"n_pruned_now": int(pruned.numel())}
    if shares:
        out["pruned_top_share"] = sum(shares) / len(shares)
    if coss:
        out["pruned_proto_cos"] = sum(coss) / len(coss)
    return out


def detector_rates(confusion: Mapping[str, int]) -> Dict[str, float]:
    """Precision and recall of the clean detector (p >= 0.5 = "clean") against label correctness, the base
    rate of correct labels and the lift (precision / base rate; 1 = no better than chance)."""
    tp, fp, tn, fn = (int(confusion.get(k, 0)) for k in ("TP", "FP", "TN", "FN"))
    n = tp + fp + tn + fn
    out: Dict[str, float] = {}
    if n == 0:
        return out
    base = (tp + fn) / n
    out["clean_base_rate"] = base
    if tp + fp:
        out["clean_precision"] = tp / (tp + fp)
        if base > 0:
            out["clean_lift"] = out["clean_precision"] / base
    if tp + fn:
        out["clean_recall"] = tp / (tp + fn)
    return out


def _cooccurrence(labels: torch.Tensor, true_labels: torch.Tensor):
    """(labels, true labels, counts): counts[k, s] = utterances of true speaker s in cluster k."""
    y, t = torch.as_tensor(labels).long().cpu(), torch.as_tensor(true_labels).long().cpu()
    K, S = int(y.max()) + 1, int(t.max()) + 1
    return y, t, torch.zeros(K * S, dtype=torch.long).index_add_(0, y * S + t, torch.ones_like(t)).view(K, S)


def majority_homes(labels: torch.Tensor, true_labels: torch.Tensor) -> torch.Tensor:
    """For every true speaker, the cluster holding most of its utterances (its "home")."""
    return _cooccurrence(labels, true_labels)[2].t().argmax(1)


def label_correct(labels: torch.Tensor, true_labels: torch.Tensor) -> torch.Tensor:
    """Per utterance: is its cluster's majority true speaker its own (the clean detector's truth)."""
    y, t, counts = _cooccurrence(labels, true_labels)
    return counts.argmax(1)[y] == t


def label_merges(
    labels: torch.Tensor, true_labels: torch.Tensor, speaker_names: Sequence[str], person_of: Optional[Mapping[str, str]] = None
) -> List[Dict[str, object]]:
    """One row per cluster that is the majority home of two or more true speakers, largest first:
    ``cluster``, ``n_speakers``, ``same_person_pairs`` (speakers of one person, e.g. a voice and its
    transformed copy), ``different_person_pairs``, ``speakers`` (space-separated names)."""
    homes = majority_homes(labels, true_labels)
    rows = []
    for c in torch.unique(homes).tolist():
        spk = [speaker_names[s] for s in torch.nonzero(homes == c).flatten().tolist()]
        if len(spk) < 2:
            continue
        person = [person_of.get(s, s) if person_of else s for s in spk]
        pairs = list(combinations(range(len(spk)), 2))
        same = sum(1 for i, j in pairs if person[i] == person[j])
        rows.append({"cluster": int(c), "n_speakers": len(spk), "same_person_pairs": same,
                     "different_person_pairs": len(pairs) - same, "speakers": " ".join(spk)})
    rows.sort(key=lambda r: (-int(r["n_speakers"]), int(r["cluster"])))
    return rows


def write_label_merges(path: str, rows: List[Dict[str, object]]) -> Dict[str, int]:
    """Writes ``label_merges.csv`` (atomically) and returns its summary: the most speakers sharing one
    home (``max_speakers_per_home``), and the same- / different-person pairs in all."""
    fields = ["cluster", "n_speakers", "same_person_pairs", "different_person_pairs", "speakers"]
    tmp = path + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    return {
        "max_speakers_per_home": max([int(r["n_speakers"]) for r in rows], default=1),
        "merged_same_person_pairs": sum(int(r["same_person_pairs"]) for r in rows),
        "merged_different_person_pairs": sum(int(r["different_person_pairs"]) for r in rows),
    }
