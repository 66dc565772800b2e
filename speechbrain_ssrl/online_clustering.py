"""Online clustering: how SSRL's teacher turns its embeddings into new pseudo labels ŷ.

The paper's rule is the nearest active prototype of the teacher's AAM classifier, computed batch by batch
while the epoch runs (``AAMSoftmax.nearest``). This module holds that rule's alternatives, each a yaml
switch of the SSRL recipe, all pure tensor functions of the teacher's embeddings ``emb`` (N, D) of one
epoch, the current labels and the prototypes (K, D):

* ``teacher_rule``: ``nearest`` (the paper) or ``margin_at_label`` (the release's option: the current
  label's logit carries the AAM margin, ``cos(θ_y + m)``, before the argmax);
* ``min_margin`` (confidence gate): ŷ replaces the current label only when its cosine beats the current
  label's by at least this much (0 = the paper's rule);
* prototype re-estimation at the end of a labelling epoch (``prototypes: mean | kmeans``): each active
  cluster's prototype becomes the normalised mean teacher embedding of its members under the current
  labels, optionally followed by spherical Lloyd steps ("online clustering that follows the
  representation"; clusters without members keep their prototype, pruned ones stay pruned);
* ``assignment: sinkhorn`` (the release's equipartition option): ŷ from a Sinkhorn-Knopp balanced
  transport plan over the active clusters instead of a plain argmax;
* ``assignment: knn`` (neither paper nor release; issue #13): ŷ by a neighbourhood vote of the current
  labels, ``knn_vote``: the labels of the row's k nearest other rows (teacher cosine), each weighted by its
  cosine, plus the row's own label counted as ``knn_self_weight`` neighbours. A prototype rule can only
  reach what the teacher's clusters separate; the vote keeps a label that most of its neighbours share
  and corrects an isolated one, so it removes noise from labels better than the teacher's own clusters
  (``bench/relabel_probe.py``: the only rule that lifted 30 %-randomised true labels).

Everything works in row chunks, so N = 1.1 M utterances x K = 8,000 prototypes never builds the full
(N, K) matrix at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from speechbrain_ssrl.clustering import label_centroids
from speechbrain_ssrl.losses import margin_logits

__all__ = [
    "RelabelConfig",
    "cluster_means",
    "spherical_lloyd",
    "sinkhorn_assign",
    "knn_vote",
    "nearest_assign",
    "gate_by_margin",
    "relabel",
]

#: rows per chunk of the (N, K) score matrix
CHUNK = 65536

PROTOTYPES = ("classifier", "mean", "kmeans")
ASSIGNMENTS = ("nearest", "sinkhorn", "knn")
TEACHER_RULES = ("nearest", "margin_at_label")


@dataclass
class RelabelConfig:
    """How ŷ is computed (yaml keys of the same names; see the module docstring)."""

    prototypes: str = "classifier"
    kmeans_iterations: int = 1
    assignment: str = "nearest"
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    teacher_rule: str = "nearest"
    label_margin: float = 0.2
    min_margin: float = 0.0
    knn_k: int = 5
    knn_self_weight: float = 3.5

    def __post_init__(self) -> None:
        for key, value, allowed in (
            ("relabel_prototypes", self.prototypes, PROTOTYPES),
            ("relabel_assignment", self.assignment, ASSIGNMENTS),
            ("teacher_rule", self.teacher_rule, TEACHER_RULES),
        ):
            if value not in allowed:
                raise ValueError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
        if int(self.kmeans_iterations) < 0:
            raise ValueError(f"relabel_kmeans_iterations must be >= 0, got {self.kmeans_iterations}")
        if float(self.sinkhorn_epsilon) <= 0:
            raise ValueError(f"sinkhorn_epsilon must be > 0, got {self.sinkhorn_epsilon}")
        if int(self.knn_k) < 1 or float(self.knn_self_weight) < 0:
            raise ValueError(
                f"relabel_knn_k must be >= 1 and relabel_knn_self_weight >= 0, got {self.knn_k} and {self.knn_self_weight}"
            )
        if self.assignment == "knn" and (self.min_margin > 0 or self.teacher_rule != "nearest"):
            raise ValueError(
                "relabel_assignment: knn votes over neighbours, not prototypes: set relabel_min_margin: 0 and "
                "teacher_rule: nearest (its confidence is relabel_knn_self_weight)"
            )

    @property
    def at_epoch_end(self) -> bool:
        """Whether ŷ needs all of the epoch's embeddings (re-estimated prototypes, a balanced assignment or the
        neighbourhood vote)."""
        return self.prototypes != "classifier" or self.assignment != "nearest"


def row_chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    """Slices of ``n`` rows, ``size`` at a time (the (N, K) score matrix is never built whole)."""
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def _masked_cos(emb: torch.Tensor, protos: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    cos = F.linear(F.normalize(emb.float(), dim=1), F.normalize(protos.float(), dim=1))
    return cos.masked_fill(~active.to(cos.device), float("-inf"))


def cluster_means(emb: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Normalised mean of the (normalised) embeddings of every cluster's members (``clustering.label_centroids``,
    the Lloyd update's own centroids); clusters with no member keep their row of ``prototypes`` (K, D)."""
    x = emb.float()
    means = label_centroids(x, labels.to(x.device), prototypes.shape[0])
    out = F.normalize(prototypes.float().to(x.device), dim=1)
    return torch.where(torch.isnan(means).any(dim=1, keepdim=True), out, means)


def nearest_assign(emb: torch.Tensor, protos: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Nearest active prototype of every row (chunked)."""
    out = torch.empty(emb.shape[0], dtype=torch.long, device=emb.device)
    for sl in row_chunks(emb.shape[0]):
        out[sl] = _masked_cos(emb[sl], protos, active).argmax(1)
    return out


def spherical_lloyd(
    emb: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, active: torch.Tensor, n_iter: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Prototypes ← cluster means of ``labels``, then ``n_iter`` spherical Lloyd steps (assign to the nearest
    active prototype, re-estimate the means). Returns (prototypes (K, D), labels after the last assignment;
    the input ``labels`` when ``n_iter`` is 0)."""
    protos = cluster_means(emb, labels, prototypes)
    lab = labels
    for _ in range(int(n_iter)):
        lab = nearest_assign(emb, protos, active)
        protos = cluster_means(emb, lab, protos)
    return protos, lab


def sinkhorn_assign(
    emb: torch.Tensor, protos: torch.Tensor, active: torch.Tensor, epsilon: float = 0.05, n_iter: int = 3
) -> torch.Tensor:
    """Balanced assignment (SwAV-style Sinkhorn-Knopp): the transport plan ``Q ∝ exp(cos / ε)`` is
    scaled ``n_iter`` times so that every active cluster receives an equal share of the rows and every
    row sums to one; ŷ = argmax of each row of Q. Computed in row chunks (the plan is never stored):
    only the per-cluster scaling vector is kept."""
    N = emb.shape[0]
    act = active.to(emb.device)
    n_act = int(act.sum())
    log_c = torch.zeros(protos.shape[0], dtype=torch.float64, device=emb.device)  # log column scaling

    def log_rows(sl: slice) -> torch.Tensor:
        z = _masked_cos(emb[sl], protos, act).double() / float(epsilon) + log_c
        return z - torch.logsumexp(z, dim=1, keepdim=True)  # rows normalised to one

    for _ in range(int(n_iter)):
        col = torch.full_like(log_c, float("-inf"))
        for sl in row_chunks(N):
            col = torch.logaddexp(col, torch.logsumexp(log_rows(sl), dim=0))
        # each active column should carry N / n_act of the mass
        target = torch.log(torch.tensor(N / max(n_act, 1), dtype=torch.float64, device=emb.device))
        upd = torch.where(act & torch.isfinite(col), target - col, torch.zeros_like(col))
        log_c = log_c + upd
    out = torch.empty(N, dtype=torch.long, device=emb.device)
    for sl in row_chunks(N):
        out[sl] = log_rows(sl).argmax(1)
    return out


def knn_vote(emb: torch.Tensor, labels: torch.Tensor, k: int, self_weight: float) -> torch.Tensor:
    """Each row's label by a vote of its ``k`` nearest other rows (cosine of ``emb``): every neighbour adds
    its cosine (clamped at 0) to its own label, and the row's own label gets ``self_weight`` times the mean
    of those k cosines (it counts as ``self_weight`` neighbours); the highest total wins, the row's own
    label on ties. Row chunks keep the (chunk, N) similarity block near 256 MB, so N = 1.1 M is possible
    (on a GPU: O(N²) products)."""
    x = F.normalize(emb.float(), dim=1)
    n = x.shape[0]
    k = min(int(k), n - 1)
    labels = labels.to(x.device)
    if k < 1:
        return labels.clone()
    n_labels = int(labels.max()) + 1
    out = torch.empty_like(labels)
    for sl in row_chunks(n, max(1, min(CHUNK, (1 << 26) // n))):
        sim = x[sl] @ x.T
        rows = torch.arange(sim.shape[0], device=x.device)
        sim[rows, rows + sl.start] = float("-inf")  # not itself
        val, nb = sim.topk(k, dim=1)
        val = val.clamp_min(0)
        score = torch.zeros(sim.shape[0], n_labels, device=x.device).scatter_add_(1, labels[nb], val)
        own = labels[sl]
        score[rows, own] += float(self_weight) * val.mean(1) + 1e-6  # ties keep the row's label
        out[sl] = score.argmax(1)
    return out


def gate_by_margin(cos: torch.Tensor, current: torch.Tensor, y_hat: torch.Tensor, min_margin: float) -> torch.Tensor:
    """ŷ where its cosine beats the current label's by ``min_margin`` or more (or the current label is
    pruned, i.e. its cosine is -inf), else the current label."""
    if min_margin <= 0:
        return y_hat
    cur = current.to(cos.device)
    c_cur = cos.gather(1, cur[:, None])[:, 0]
    c_hat = cos.gather(1, y_hat[:, None])[:, 0]
    keep = torch.isfinite(c_cur) & (c_hat - c_cur < float(min_margin))
    return torch.where(keep, cur, y_hat)


def rule_assign(cos: torch.Tensor, current: torch.Tensor, cfg: RelabelConfig) -> torch.Tensor:
    """The teacher's ŷ for a block of masked cosines: ``teacher_rule`` then the confidence gate."""
    cur = current.to(cos.device)
    if cfg.teacher_rule == "margin_at_label":
        ok = torch.isfinite(cos.gather(1, cur[:, None])[:, 0])
        logits = margin_logits(cos.masked_fill(~torch.isfinite(cos), -2.0), torch.where(ok, cur, cos.argmax(1)),
                               float(cfg.label_margin), 1.0)
        y_hat = logits.masked_fill(~torch.isfinite(cos), float("-inf")).argmax(1)
    else:
        y_hat = cos.argmax(1)
    return gate_by_margin(cos, cur, y_hat, cfg.min_margin)


def relabel(
    emb: torch.Tensor,
    current: torch.Tensor,
    prototypes: torch.Tensor,
    active: torch.Tensor,
    cfg: RelabelConfig,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """ŷ for every row of ``emb`` (the teacher's embeddings of one epoch, labels ``current``).

    Returns (ŷ (N,), new prototypes (K, D) or None when the classifier's prototypes were used as they are).
    """
    new_protos = None
    protos = prototypes
    if cfg.prototypes != "classifier":
        iters = int(cfg.kmeans_iterations) if cfg.prototypes == "kmeans" else 0
        new_protos, _ = spherical_lloyd(emb, current, prototypes, active, iters)
        protos = new_protos
    if cfg.assignment == "knn":
        return knn_vote(emb, current, cfg.knn_k, cfg.knn_self_weight), new_protos
    if cfg.assignment == "sinkhorn":
        y_hat = sinkhorn_assign(emb, protos, active, cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations)
        if cfg.min_margin > 0:
            for sl in row_chunks(emb.shape[0]):
                y_hat[sl] = gate_by_margin(_masked_cos(emb[sl], protos, active), current[sl], y_hat[sl], cfg.min_margin)
        return y_hat, new_protos
    y_hat = torch.empty(emb.shape[0], dtype=torch.long, device=emb.device)
    for sl in row_chunks(emb.shape[0]):
        y_hat[sl] = rule_assign(_masked_cos(emb[sl], protos, active), current[sl], cfg)
    return y_hat, new_protos
