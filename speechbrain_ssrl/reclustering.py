"""Re-clustering inside one SSRL run: a fresh clustering of the teacher's embeddings at chosen epochs.

Neither the paper nor the release does this (issue #13; yaml key ``recluster_epochs``, default ``[]``). The
online loop relabels each utterance from the current labels' neighbourhood (nearest prototype, queue vote,
neighbourhood vote), so it keeps the errors the labels share with the representation they came from: from
a k-means start it keeps the k-means labels, while a fresh k-means of the same run's final embeddings
groups the speakers better (recipe README, "NMI re-clustered"; ``bench/relabel_probe.py``). The iterative
baseline gets its gain that way, by re-clustering between rounds. Here the re-clustering happens inside the
run, at the end of the listed epochs, without restarting the model:

1. the EMA teacher (a copy, BN re-estimated on clean crops) embeds every training utterance, as the initial
   clustering does (``recluster_embeddings: pass``), or the run takes the teacher embeddings its relabelling
   recorded during the epoch, one clean teacher crop per utterance, and embeds nothing (``epoch``,
   :func:`epoch_embeddings`; an utterance the epoch did not see stands in as its cluster's mean), and k-means splits them into as many clusters as are active (``recluster_init:
   k-means++``; with ``cluster_method: spectral``, the MiniVox default, a spectral clustering of their k-NN graph
   does, ``spectral_clustering.py``), or starts from the current labels' mean embeddings (``labels``: Lloyd to convergence from the
   labels, so it keeps what they know where the embeddings agree; ``bench/relabel_probe.py``'s ``lloyd_30``);
   With ``recluster_merge_connectivity`` (neither paper nor release) the clusters that the k-NN graph of the
   embeddings joins at least that strongly are then merged (``spectral_clustering.merge_connected``), and the ids
   left over are pruned, so the next re-clustering's count (the active clusters) is lower;
2. each new cluster takes the id of the active cluster it shares the most utterances with (a one-to-one
   matching, :func:`map_onto`), so ids, queues and pruning keep their meaning;
3. labels and queues restart from the new labels (as from y0), the clean probabilities from 1, and both
   classifiers' rows of the matched ids turn to the new centroids.

The epochs are listed (``recluster_epochs``) or follow the run (``recluster_every: n``: every n-th epoch after
the label-fixed epochs, :func:`recluster_every`); the run re-clusters at the union of both.

Between two re-clusterings the queue keeps the new labels for its seeded epochs and the online loop goes on.

A gate (``recluster_max_gain``, :func:`accepts`) can keep the labels instead: the k-means objective of the new
partition and of the labels it would replace (on the same embeddings, saved with the re-clustering) decide.
A condition (``recluster_if``, :func:`allows`) can skip a re-clustering before anything is embedded:
``never_noisy`` re-clusters only while the noisy-label model has found no noisy mode in any epoch of the run.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

import numpy as np
import torch

from speechbrain_ssrl.clustering import mean_cosine
from speechbrain_ssrl.metrics import contingency, hungarian_pairs
from speechbrain_ssrl.online_clustering import cluster_means

__all__ = ["RECLUSTER_EMBEDDINGS", "RECLUSTER_IFS", "RECLUSTER_INITS", "accepts", "allows", "epoch_embeddings",
           "map_onto", "mean_cosine", "recluster_embeddings", "recluster_epochs", "recluster_every", "recluster_if",
           "recluster_max_gain", "recluster_merge_connectivity"]

#: how a re-clustering's k-means starts (yaml ``recluster_init``): ``k-means++`` (fresh, as the initial clustering
#: and the iterative baseline) or ``labels`` (from the current labels' mean embeddings, run to convergence)
RECLUSTER_INITS = ("k-means++", "labels")

#: when a listed re-clustering happens (yaml ``recluster_if``): ``always``, or ``never_noisy``: only while no
#: labelling epoch so far found a noisy mode (``NoisyLabelModel.noisy_fits == 0``)
RECLUSTER_IFS = ("always", "never_noisy")

#: what a re-clustering clusters (yaml ``recluster_embeddings``): ``pass`` = a pass of the teacher over every
#: training utterance (BN re-estimated on clean crops, up to ``cluster_max_seconds``), as the initial clustering;
#: ``epoch`` = the teacher embeddings recorded by the epoch's relabelling (:func:`epoch_embeddings`), no extra pass
RECLUSTER_EMBEDDINGS = ("pass", "epoch")


def recluster_epochs(value: Optional[Iterable[int]], number_of_epochs: int, key: str = "recluster_epochs") -> List[int]:
    """The yaml's list of epochs after which the run re-clusters, checked: integers in [1, number_of_epochs)
    (a re-clustering after the last epoch would give labels nothing trains on), sorted, without repeats."""
    if value is None:
        return []
    if isinstance(value, (int, str)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{key}: {value!r} is not a list of epochs; write e.g. {key}: [4, 6, 8] (or [] for never)")
    out = []
    for e in value:
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or not 1 <= int(e) < int(number_of_epochs):
            raise ValueError(
                f"{key}: {e!r} is not an epoch in [1, {int(number_of_epochs) - 1}] (number_of_epochs: "
                f"{number_of_epochs}; the last epoch cannot re-cluster); fix the list"
            )
        out.append(int(e))
    return sorted(set(out))


def recluster_every(value, fixed_label_epochs: int, number_of_epochs: int, key: str = "recluster_every") -> List[int]:
    """The epochs of ``recluster_every: n``: every n-th epoch counted from the end of the ``fixed_label_epochs``
    (the first label update is epoch ``fixed_label_epochs + 1``), never the last epoch; ``0`` = none. With 10
    epochs, 2 label-fixed and n = 2: epochs 4, 6, 8; n = 1: epochs 3-9 (the MiniVox schedule); the schedule scales
    with the run length (``run_experiments.py --ssrl_epochs``, ``--number_of_epochs``) where a fixed list would be
    refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 0:
        raise ValueError(f"{key}: {value!r} is not a whole number of epochs >= 0; write e.g. {key}: 2 (or 0 for never)")
    n = int(value)
    if n == 0:
        return []
    return list(range(int(fixed_label_epochs) + n, int(number_of_epochs), n))


def epoch_embeddings(
    idx: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor
) -> Tuple[torch.Tensor, int]:
    """The epoch's recorded teacher embeddings as one row per utterance (yaml ``recluster_embeddings: epoch``).

    Args:
        idx: (n,) utterance indices of the records (CSV order); a repeated index keeps its last record.
        emb: (n, D) their teacher embeddings.
        labels: (N,) the current labels (ids < ``len(prototypes)``).
        prototypes: (K, D) the teacher classifier's rows.
    Returns:
        (N, D) L2-normalised rows, and how many of them were filled: an utterance without a record (the sampler's
        dropped tail, 16 of 2,320 on MiniVox demo) takes the normalised mean of its cluster's recorded rows, or
        its cluster's prototype when none of them was recorded, so that k-means places it with its cluster.
    """
    idx = torch.as_tensor(idx).to("cpu", torch.long).flatten()
    labels = torch.as_tensor(labels).to("cpu", torch.long).flatten()
    emb = torch.nn.functional.normalize(torch.as_tensor(emb).detach().to("cpu", torch.float32), dim=1)
    protos = torch.nn.functional.normalize(torch.as_tensor(prototypes).detach().to("cpu", torch.float32), dim=1)
    if idx.numel() != emb.shape[0] or emb.dim() != 2 or emb.shape[1] == 0:
        raise ValueError(f"need one recorded embedding per index, got {idx.numel()} indices and embeddings of shape "
                         f"{tuple(emb.shape)}")
    if emb.shape[1] != protos.shape[1]:
        raise ValueError(f"embeddings of dimension {emb.shape[1]} but prototypes of dimension {protos.shape[1]}")
    n = labels.numel()
    last = torch.full((n,), -1, dtype=torch.long).scatter_reduce(0, idx, torch.arange(idx.numel()), reduce="amax")
    seen = last >= 0  # (each utterance's last record: index_put with repeats has no defined winner)
    out = torch.zeros(n, emb.shape[1])
    out[seen] = emb[last[seen]]
    todo = torch.nonzero(~seen).flatten()
    if todo.numel():
        out[todo] = cluster_means(out[seen], labels[seen], protos)[labels[todo]]
    return out, int(todo.numel())


def map_onto(new_labels: torch.Tensor, old_labels: torch.Tensor, target_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """New cluster ids 0..k-1 → ``target_ids`` (k <= len(target_ids)), one to one, maximising the utterances
    whose id stays: each new cluster takes the target id it shares the most utterances with under
    ``old_labels`` (Hungarian matching on the contingency table, ``metrics.hungarian_pairs``); the new
    clusters left unmatched (no overlap with a free target id) take the unused target ids in ascending order.

    Returns (the new labels in target ids, the map: LongTensor (k,), new cluster c → its id).
    """
    new = torch.as_tensor(new_labels).to("cpu", torch.long)
    old = torch.as_tensor(old_labels).to("cpu", torch.long)
    targets = torch.as_tensor(target_ids).to("cpu", torch.long)
    if new.shape != old.shape or new.dim() != 1:
        raise ValueError(f"new and old labels must be 1-D of one length, got {tuple(new.shape)} and {tuple(old.shape)}")
    if targets.unique().numel() != targets.numel():
        raise ValueError("target_ids must be distinct")
    k = int(new.max()) + 1 if new.numel() else 0
    if k > targets.numel():
        raise ValueError(f"{k} new clusters but only {targets.numel()} target ids")
    mapping = torch.full((k,), -1, dtype=torch.long)
    if new.numel():
        r, c = hungarian_pairs(contingency(new.numpy(), old.numpy()))  # positions in the sorted distinct labels
        pair_new, pair_old = new.unique()[r], old.unique()[c]
        keep = torch.isin(pair_old, targets)
        mapping[pair_new[keep]] = pair_old[keep]
    used = torch.isin(targets, mapping[mapping >= 0])
    free = targets[~used].sort().values
    todo = torch.nonzero(mapping < 0).flatten()
    mapping[todo] = free[: todo.numel()]
    return mapping[new], mapping


def _optional_threshold(value, key: str, valid, needs: str, example: str, off: str) -> Optional[float]:
    """A yaml number that may be switched off: ``None`` (``null``) or a float that ``valid`` accepts; else one
    line naming the key, what it needs and an example (NaN and booleans are refused)."""
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or v != v or not valid(v):
        raise ValueError(f"{key}: {value!r} is not {needs}; write e.g. {key}: {example} (or null for {off})")
    return v


def recluster_max_gain(value, key: str = "recluster_max_gain") -> Optional[float]:
    """The yaml's gate, checked: ``None`` (every re-clustering replaces the labels) or a number > 0."""
    return _optional_threshold(value, key, lambda v: 0 < v < float("inf"), "a number > 0", "0.02", "no gate")


def recluster_merge_connectivity(value, key: str = "recluster_merge_connectivity") -> Optional[float]:
    """The yaml's merge threshold, checked: ``None`` (no merging) or a k-NN connectivity in (0, 1]
    (``spectral_clustering.merge_connected``)."""
    return _optional_threshold(value, key, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]", "0.25", "no merging")


def accepts(objective: float, labels_objective: float, max_gain: Optional[float]) -> bool:
    """Whether a re-clustering replaces the labels (yaml ``recluster_max_gain``). Without a gate, always. With
    one, only when the new partition's k-means objective beats the labels' (``clustering.mean_cosine`` on the
    same embeddings) by more than 0 and at most ``max_gain``: labels that are a worse k-means solution than the
    new one, but only a little, are an earlier k-means of the representation (the k-means start), which the
    re-clustering updates; labels far below it do not follow the embeddings and carry what the embeddings do
    not (noisy true labels: the online loop corrects them), and labels above it are the better partition."""
    if max_gain is None:
        return True
    gain = float(objective) - float(labels_objective)
    return 0.0 < gain <= float(max_gain)


def recluster_embeddings(value, key: str = "recluster_embeddings") -> str:
    """The yaml's source of a re-clustering's embeddings, checked: one of :data:`RECLUSTER_EMBEDDINGS`."""
    v = "pass" if value is None else str(value)
    if v not in RECLUSTER_EMBEDDINGS:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(RECLUSTER_EMBEDDINGS)}; fix the yaml key")
    return v


def recluster_if(value, noisy_label_model: bool, noisy_floor, scheduled: bool = True, key: str = "recluster_if") -> str:
    """The yaml's condition, checked. ``never_noisy`` reads the noisy-label model's verdicts, so it needs that
    model on (``noisy_label_model: true``) and a floor that can say "no noisy mode" (``gmm_noisy_floor`` not
    ``none``: without one every fitted GMM has a noisy component and the run would never re-cluster).
    ``noisy_floor`` is the setting as ``noisy_labels.noisy_floor_setting`` reads it (``None`` = no floor). A run
    with no re-clustering epoch (``scheduled`` false, e.g. ``--number_of_epochs`` too short for the schedule)
    never reads the condition, so only its name is checked."""
    v = "always" if value is None else str(value)
    if v not in RECLUSTER_IFS:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(RECLUSTER_IFS)}; fix the yaml key")
    if v == "never_noisy" and scheduled:
        if not noisy_label_model:
            raise ValueError(f"{key}: never_noisy reads the noisy-label model's GMM, but noisy_label_model is false; "
                             f"set noisy_label_model: true or {key}: always")
        if noisy_floor is None:
            raise ValueError(f"{key}: never_noisy needs a gmm_noisy_floor (log_k or a number) to tell 'no noisy mode'; "
                             f"set gmm_noisy_floor: log_k or {key}: always")
    return v


def allows(condition: str, noisy_fits: int) -> bool:
    """Whether a listed re-clustering happens (yaml ``recluster_if``). ``always``: yes. ``never_noisy``: only if no
    labelling epoch so far found a noisy mode (``noisy_fits`` = 0). No label has then ever stood out of the
    teacher's loss: every label is one the teacher fits, the labels are the representation's own clustering and
    the online loop has nothing to correct, so re-clustering the improved representation (the baseline's move) is
    how the labels can follow it. Once a noisy mode has appeared, the labels carry what the teacher does not fit
    yet (noise the loop is removing, or speakers it has not learned): the run stays with the online loop."""
    if condition not in RECLUSTER_IFS:
        raise ValueError(f"recluster_if: {condition!r} is not one of {', '.join(RECLUSTER_IFS)}")
    return condition == "always" or int(noisy_fits) == 0
