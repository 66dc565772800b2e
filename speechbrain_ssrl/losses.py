"""AAM-softmax classifier with per-sample losses and masking of pruned clusters (SSRL stage 2).

SpeechBrain's ``Classifier`` + ``LogSoftmaxWrapper(AdditiveAngularMargin)`` returns one batch-mean
loss; SSRL needs the loss of every sample (to weight it by its clean probability) and needs to
remove the clusters that own no utterance from the softmax. ``AAMSoftmax`` holds the class
prototypes ``W`` (K, D), initialised from the k-means centroids, and a bool buffer ``active`` (K,)
(``False`` = pruned): pruned classes get logit ``-inf``, so they are never predicted and their
prototypes receive no gradient.

Logits (ArcFace / SpeechBrain ``AdditiveAngularMargin`` semantics):

    cos = normalise(emb) · normalise(W)ᵀ
    logit_k = s · cos(θ_y + m)   for the target k = y,    s · cos θ_k otherwise
    cos(θ + m) = cos θ cos m - sin θ sin m, with sin θ from cos θ clamped to ±(1 - 1e-7);
    easy_margin: use cos θ where cos θ <= 0; otherwise use cos θ - sin(π - m)·m where
    cos θ <= cos(π - m) (keeps the target logit monotone in θ beyond π - m).

The margin is applied to the target column only (a gather / scatter of B values), so the cost for
K = 8000, D = 512 is one (B, D) × (D, K) matmul plus one softmax.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AAMSoftmax", "margin_logits", "weighted_mean"]

_REDUCTIONS = ("none", "mean")


def _flat_targets(targets: torch.Tensor, batch: int) -> torch.Tensor:
    y = torch.as_tensor(targets)
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1 or y.shape[0] != batch:
        raise ValueError(f"targets must have shape ({batch},) or ({batch}, 1), got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"targets must be integer class ids, got {y.dtype}")
    return y.long()


def margin_logits(
    cos: torch.Tensor, targets: torch.Tensor, margin: float, scale: float, easy_margin: bool = False
) -> torch.Tensor:
    """``scale`` × cosines (B, K), with the target column replaced by ``cos(θ + margin)`` (float32).

    ``-inf`` entries (masked classes) stay ``-inf``; the target column must be finite.
    """
    cos = cos.float()
    y = _flat_targets(targets, cos.shape[0]).to(cos.device)
    if margin == 0.0:
        return scale * cos
    cos_t = cos.gather(1, y[:, None])
    c = cos_t.clamp(-1.0 + 1e-7, 1.0 - 1e-7)
    sin_t = torch.sqrt(1.0 - c * c)
    phi = c * math.cos(margin) - sin_t * math.sin(margin)
    if easy_margin:
        phi = torch.where(c > 0, phi, c)
    else:
        th, mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin
        phi = torch.where(c > th, phi, c - mm)
    return scale * cos.scatter(1, y[:, None], phi)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ w·l / Σ w`` over a batch (the clean-probability weighted student loss).

    When ``Σ w == 0`` (every sample judged noisy) the plain mean of ``losses`` is returned instead,
    so the step still trains; the choice is made on the device (``torch.where``, no host sync).
    ``weights`` are treated as given (pass constants, e.g. ``NoisyLabelModel.weights``).
    """
    if losses.shape != weights.shape:
        raise ValueError(f"losses {tuple(losses.shape)} and weights {tuple(weights.shape)} differ in shape")
    if losses.numel() == 0:
        raise ValueError("weighted_mean of an empty batch")
    w = weights.to(losses.dtype)
    total = w.sum()
    weighted = (w * losses).sum() / total.clamp_min(torch.finfo(losses.dtype).tiny)
    return torch.where(total > 0, weighted, losses.mean())


class AAMSoftmax(nn.Module):
    """Cosine classifier with additive angular margin, per-sample loss and prunable classes.

    Arguments
    ---------
    n_classes, emb_dim : K and D (not needed when ``centroids`` are given; checked if both are)
    centroids : (K, D) tensor or None; rows are L2-normalised into the initial ``weight``.
        Without centroids the weight is Xavier-uniform initialised (as SpeechBrain's ``Classifier``).
    margin, scale : AAM margin ``m`` (radians) and scale ``s``
    easy_margin : ArcFace's easy-margin variant (see the module docstring)

    State: ``weight`` (parameter) and ``active`` (bool buffer) are in ``state_dict``.
    """

    def __init__(
        self,
        n_classes: Optional[int] = None,
        emb_dim: Optional[int] = None,
        centroids: Optional[torch.Tensor] = None,
        margin: float = 0.2,
        scale: float = 32.0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        if centroids is not None:
            c = torch.as_tensor(centroids).detach().float()
            if c.dim() != 2:
                raise ValueError(f"centroids must be (K, D), got shape {tuple(c.shape)}")
            if n_classes is not None and int(n_classes) != c.shape[0]:
                raise ValueError(f"n_classes={n_classes} but centroids have {c.shape[0]} rows")
            if emb_dim is not None and int(emb_dim) != c.shape[1]:
                raise ValueError(f"emb_dim={emb_dim} but centroids have {c.shape[1]} columns")
            if not torch.isfinite(c).all():
                raise ValueError("centroids contain NaN or inf")
            weight = F.normalize(c, dim=1).clone()
        else:
            if n_classes is None or emb_dim is None:
                raise ValueError("give either centroids or both n_classes and emb_dim")
            weight = torch.empty(int(n_classes), int(emb_dim))
            nn.init.xavier_uniform_(weight)
        if weight.shape[0] < 1 or weight.shape[1] < 1:
            raise ValueError(f"need K >= 1 classes and D >= 1 dimensions, got {tuple(weight.shape)}")
        self.weight = nn.Parameter(weight)
        self.register_buffer("active", torch.ones(weight.shape[0], dtype=torch.bool))
        self.margin = float(margin)
        self.scale = float(scale)
        self.easy_margin = bool(easy_margin)

    # ---------------------------------------------------------------- classes
    @property
    def n_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def n_active(self) -> int:
        """Number of classes not pruned."""
        return int(self.active.sum())

    def pruned_ids(self) -> torch.Tensor:
        """Ids of the pruned classes (LongTensor, ascending)."""
        return torch.nonzero(~self.active).flatten()

    @torch.no_grad()
    def prune(self, class_ids: Union[torch.Tensor, Iterable[int]]) -> int:
        """Mark classes as pruned (ids, or a bool mask of length K); returns how many were newly pruned.

        Pruning is permanent (``active`` is never set back here). Pruning every class is an error.
        """
        ids = torch.as_tensor(class_ids if isinstance(class_ids, torch.Tensor) else list(class_ids))
        if ids.dtype == torch.bool:
            if ids.shape != self.active.shape:
                raise ValueError(f"bool prune mask must have shape ({self.n_classes},), got {tuple(ids.shape)}")
            ids = torch.nonzero(ids).flatten()
        ids = ids.to(self.active.device, torch.long).flatten()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.n_classes):
            raise IndexError(f"class ids must be in [0, {self.n_classes})")
        new = self.active.clone()
        new[ids] = False
        if not bool(new.any()):
            raise ValueError("pruning would remove every class")
        n_new = int((self.active & ~new).sum())
        self.active.copy_(new)
        return n_new

    # ---------------------------------------------------------------- scores
    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (B, K) of embeddings (B, D) or (B, 1, D) with every prototype."""
        if emb.dim() == 3 and emb.shape[1] == 1:
            emb = emb[:, 0]
        if emb.dim() != 2 or emb.shape[1] != self.weight.shape[1]:
            raise ValueError(
                f"embeddings must be (B, {self.weight.shape[1]}) or (B, 1, {self.weight.shape[1]}), "
                f"got {tuple(emb.shape)}"
            )
        return F.linear(F.normalize(emb, dim=1), F.normalize(self.weight, dim=1))

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` (B, K) with pruned classes set to ``-inf`` (out of place; no-op if none pruned)."""
        return scores.masked_fill(~self.active, float("-inf"))

    def nearest(self, emb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Online clustering: (nearest active prototype (B,), masked cosines (B, K))."""
        cos = self.mask(self.cosine(emb))
        return cos.argmax(dim=1), cos

    def _check_targets(self, y: torch.Tensor) -> None:
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise IndexError(f"targets must be in [0, {self.n_classes}), got [{int(y.min())}, {int(y.max())}]")
        bad = ~self.active[y]
        if bool(bad.any()):
            ids = torch.unique(y[bad]).tolist()
            raise ValueError(
                f"targets include pruned classes {ids[:10]}{' ...' if len(ids) > 10 else ''}: "
                "labels must be remapped (or not pruned) before training on them"
            )

    def _masked_ce(self, logits: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
        return _reduce(F.cross_entropy(self.mask(logits), y, reduction="none"), reduction)

    # ---------------------------------------------------------------- losses
    def forward(self, emb: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """Per-sample (``"none"``, shape (B,)) or mean AAM cross-entropy; pruned classes masked.

        A target that is pruned (or out of range) raises an error.
        """
        cos = self.cosine(emb)
        y = _flat_targets(targets, cos.shape[0]).to(cos.device)
        self._check_targets(y)
        logits = margin_logits(cos, y, self.margin, self.scale, self.easy_margin)
        return self._masked_ce(logits, y, reduction)

    def teacher_loss(
        self,
        cos: torch.Tensor,
        targets: torch.Tensor,
        scale: Optional[float] = None,
        margin: float = 0.0,
        reduction: str = "none",
    ) -> torch.Tensor:
        """Per-sample ``CE(scale · cos, y)`` with pruned classes masked (the noise model's ``λ``).

        ``cos`` (B, K) from ``cosine`` or ``nearest`` (already masked is fine). No margin by
        default (the yaml key ``teacher_margin`` sets one); ``scale`` defaults to ``self.scale``.
        """
        y = _flat_targets(targets, cos.shape[0]).to(cos.device)
        self._check_targets(y)
        s = self.scale if scale is None else float(scale)
        logits = margin_logits(cos, y, float(margin), s, self.easy_margin)
        return self._masked_ce(logits, y, reduction)

    def extra_repr(self) -> str:
        return (
            f"n_classes={self.n_classes}, emb_dim={self.weight.shape[1]}, margin={self.margin}, "
            f"scale={self.scale}, easy_margin={self.easy_margin}"
        )
