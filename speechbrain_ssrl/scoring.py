"""Verification scoring: cosine scores, EER and minDCF by sorting, leave-one-speaker-out errors.

``eer`` and ``min_dcf`` use the same threshold set and tie rules as
``speechbrain.utils.metric_stats.EER`` / ``minDCF`` (sorted unique scores plus midpoints), but run in
O(N log N) time and O(N) memory, so VoxCeleb1-E/H (580k trials) take seconds.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch


def _as_1d(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: EER/minDCF need at least one target and one non-target trial")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf scores (check the embeddings for NaNs)")
    return t


def _rates(pos: torch.Tensor, neg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thresholds (unique scores and midpoints), miss rate P(pos <= t) and false-alarm rate P(neg > t)."""
    th = torch.unique(torch.cat([pos, neg]))  # sorted
    th = torch.sort(torch.cat([th, (th[:-1] + th[1:]) / 2]))[0]
    frr = torch.searchsorted(torch.sort(pos)[0], th, right=True).double() / len(pos)
    far = 1.0 - torch.searchsorted(torch.sort(neg)[0], th, right=True).double() / len(neg)
    return th, frr, far


def eer(pos_scores, neg_scores) -> Tuple[float, float]:
    """Equal error rate in [0, 1] and its threshold (same values as SpeechBrain's ``EER``)."""
    pos, neg = _as_1d(pos_scores, "pos_scores"), _as_1d(neg_scores, "neg_scores")
    th, frr, far = _rates(pos, neg)
    i = int(torch.argmin((far - frr).abs()))
    return float((far[i] + frr[i]) / 2), float(th[i])


def min_dcf(pos_scores, neg_scores, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> Tuple[float, float]:
    """Normalised minimum detection cost and its threshold.

    C_det = c_miss * P_miss * p_target + c_fa * P_fa * (1 - p_target), divided by
    min(c_miss * p_target, c_fa * (1 - p_target)). SpeechBrain's ``minDCF`` returns the value
    before normalisation: ``min_dcf(...)[0] * min(c_miss*p, c_fa*(1-p)) == minDCF(...)[0]``.
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    pos, neg = _as_1d(pos_scores, "pos_scores"), _as_1d(neg_scores, "neg_scores")
    th, frr, far = _rates(pos, neg)
    dcf = c_miss * frr * p_target + c_fa * far * (1 - p_target)
    i = int(torch.argmin(dcf))
    norm = min(c_miss * p_target, c_fa * (1 - p_target))
    return float(dcf[i] / norm), float(th[i])


def cosine_scores(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two (N, D) embedding matrices."""
    a = torch.nn.functional.normalize(emb_a.float(), dim=-1)
    b = torch.nn.functional.normalize(emb_b.float(), dim=-1)
    return (a * b).sum(-1)


def split_scores(scores, labels) -> Tuple[np.ndarray, np.ndarray]:
    """Target and non-target scores from per-trial scores and 0/1 labels."""
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels).astype(bool)
    if lab.all() or not lab.any():
        raise ValueError("the trial list has only one class (all targets or all non-targets): EER is undefined")
    return s[lab], s[~lab]


def eer_of_trials(scores, labels) -> float:
    """EER (in %) of per-trial scores with 0/1 labels."""
    pos, neg = split_scores(scores, labels)
    return 100.0 * eer(pos, neg)[0]


def leave_one_speaker_out(
    stat: Callable[[np.ndarray], float],
    spk_a: Sequence[str],
    spk_b: Sequence[str],
) -> Tuple[float, float, List[float]]:
    """Jackknife standard error of a trial-list statistic, leaving out one test speaker at a time.

    ``stat(mask)`` computes the statistic on the trials selected by a boolean mask. Removing speaker
    s drops every trial in which s appears on either side. Returns (value on all trials, standard
    error, the leave-one-out values). Paired differences of two systems are obtained by passing a
    ``stat`` that returns the difference.
    """
    a, b = np.asarray(spk_a), np.asarray(spk_b)
    full = stat(np.ones(len(a), dtype=bool))
    speakers = sorted(set(a.tolist()) | set(b.tolist()))
    vals = []
    for s in speakers:
        mask = (a != s) & (b != s)
        try:
            vals.append(float(stat(mask)))
        except ValueError:  # only one class left without this speaker
            continue
    n = len(vals)
    if n < 2:
        return float(full), float("nan"), vals
    v = np.asarray(vals)
    se = float(np.sqrt((n - 1) / n * np.sum((v - v.mean()) ** 2)))
    return float(full), se, vals


def eer_with_se(scores, labels, spk_a, spk_b) -> Dict[str, float]:
    """EER in % with its leave-one-test-speaker-out standard error."""
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels).astype(bool)
    value, se, _ = leave_one_speaker_out(lambda m: eer_of_trials(s[m], lab[m]), spk_a, spk_b)
    return {"eer": value, "eer_se": se}
