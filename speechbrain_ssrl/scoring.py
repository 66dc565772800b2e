"""Verification scoring: cosine scores, EER and minDCF by sorting, AS-norm, leave-one-speaker-out errors.

``eer`` and ``min_dcf`` use the same threshold set, the same float32 rates and the same tie rules as
``speechbrain.utils.metric_stats.EER`` / ``minDCF`` (sorted unique scores plus midpoints), so they
return the same numbers, but run in O(N log N) time and O(N) memory: VoxCeleb1-E/H (580k trials)
take well under a second instead of hours / tens of GB.

AS-norm (adaptive symmetric score normalisation) uses a cohort of *unlabelled* embeddings (e.g. the
training utterances): for each side of a trial, the mean and standard deviation of its ``topk``
highest cosine scores against the cohort normalise the raw score.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch


# --------------------------------------------------------------------------------------------------
# EER / minDCF
# --------------------------------------------------------------------------------------------------
def _as_1d(x, name: str) -> torch.Tensor:
    """1-D float tensor on the CPU; keeps float32/float64 (as SpeechBrain would see it)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu")
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:  # python sequences: keep double precision
        t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    t = t.flatten()
    if not t.is_floating_point():
        t = t.double()
    elif t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: EER/minDCF need at least one target and one non-target trial")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf scores (check the embeddings for NaNs)")
    return t


def _pair(pos_scores, neg_scores) -> Tuple[torch.Tensor, torch.Tensor]:
    pos, neg = _as_1d(pos_scores, "pos_scores"), _as_1d(neg_scores, "neg_scores")
    dtype = torch.promote_types(pos.dtype, neg.dtype)
    return pos.to(dtype), neg.to(dtype)


def _rates(pos: torch.Tensor, neg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thresholds (unique scores and midpoints, in the scores' dtype), miss rate P(pos <= t) and
    false-alarm rate P(neg > t), both float32 computed as SpeechBrain does (count.float() / n)."""
    th = torch.unique(torch.cat([pos, neg]))  # sorted
    th = torch.sort(torch.cat([th, (th[:-1] + th[1:]) / 2]))[0]
    n_miss = torch.searchsorted(torch.sort(pos)[0], th, right=True)
    n_fa = len(neg) - torch.searchsorted(torch.sort(neg)[0], th, right=True)
    frr = n_miss.float() / pos.shape[0]
    far = n_fa.float() / neg.shape[0]
    return th, frr, far


def _eer_index(frr: torch.Tensor, far: torch.Tensor) -> int:
    """The threshold index SpeechBrain's sequential ``EER`` loop ends on.

    The loop keeps threshold i when ``float32|FAR_i - FRR_i| < |FAR_best - FRR_best|`` (the right
    side in double precision). FAR - FRR is monotone over the sorted thresholds, so the loop always
    takes the first minimum m of the float32 value r; afterwards only thresholds with r == r_min can
    replace it, each one replacing the current best while the best's exact value exceeds r_min.
    """
    r = (far - frr).abs()
    r_min = r.min()
    ties = torch.nonzero(r == r_min).flatten()  # ascending, ties[0] is the first argmin
    if len(ties) == 1:
        return int(ties[0])
    exact = (far[ties].double() - frr[ties].double()).abs()
    stop = torch.nonzero(exact <= float(r_min)).flatten()
    return int(ties[stop[0]]) if len(stop) else int(ties[-1])


def eer(pos_scores, neg_scores) -> Tuple[float, float]:
    """Equal error rate in [0, 1] and its threshold (same values as SpeechBrain's ``EER``)."""
    pos, neg = _pair(pos_scores, neg_scores)
    th, frr, far = _rates(pos, neg)
    i = _eer_index(frr, far)
    return (float(far[i]) + float(frr[i])) / 2, float(th[i])


def min_dcf(pos_scores, neg_scores, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> Tuple[float, float]:
    """Normalised minimum detection cost and its threshold.

    C_det = c_miss * P_miss * p_target + c_fa * P_fa * (1 - p_target), divided by
    min(c_miss * p_target, c_fa * (1 - p_target)). SpeechBrain's ``minDCF`` returns the value
    before normalisation: ``min_dcf(...)[0] * min(c_miss*p, c_fa*(1-p)) == minDCF(...)[0]``.
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    pos, neg = _pair(pos_scores, neg_scores)
    th, frr, far = _rates(pos, neg)
    dcf = c_miss * frr * p_target + c_fa * far * (1 - p_target)
    c_min, i = torch.min(dcf, dim=0)
    norm = min(c_miss * p_target, c_fa * (1 - p_target))
    return float(c_min) / norm, float(th[i])


def eer_and_min_dcf(pos_scores, neg_scores, p_targets: Sequence[float] = (0.01, 0.05)) -> Dict[str, float]:
    """``eer`` (in [0, 1]) and normalised ``min_dcf`` for several p_target from one sort of the scores.

    Returns ``{"eer", "eer_threshold", "min_dcf_<p>", "min_dcf_<p>_threshold", ...}``.
    """
    for p in p_targets:
        if not 0.0 < p < 1.0:
            raise ValueError(f"p_target must be in (0, 1), got {p}")
    pos, neg = _pair(pos_scores, neg_scores)
    th, frr, far = _rates(pos, neg)
    i = _eer_index(frr, far)
    out = {"eer": (float(far[i]) + float(frr[i])) / 2, "eer_threshold": float(th[i])}
    for p in p_targets:
        dcf = 1.0 * frr * p + 1.0 * far * (1 - p)
        c_min, j = torch.min(dcf, dim=0)
        out[f"min_dcf_{p:g}"] = float(c_min) / min(p, 1 - p)
        out[f"min_dcf_{p:g}_threshold"] = float(th[j])
    return out


def det_curve(pos_scores, neg_scores, max_points: Optional[int] = 2000) -> Tuple[np.ndarray, np.ndarray]:
    """(false-alarm rate, miss rate) over the thresholds, for DET plots (thinned to ``max_points``)."""
    pos, neg = _pair(pos_scores, neg_scores)
    _, frr, far = _rates(pos, neg)
    far, frr = far.double().numpy(), frr.double().numpy()
    if max_points is not None and len(far) > max_points:
        keep = np.unique(np.linspace(0, len(far) - 1, max_points).round().astype(int))
        far, frr = far[keep], frr[keep]
    return far, frr


# --------------------------------------------------------------------------------------------------
# Cosine scores and trials
# --------------------------------------------------------------------------------------------------
def cosine_scores(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two (N, D) embedding matrices."""
    a = torch.nn.functional.normalize(emb_a.float(), dim=-1)
    b = torch.nn.functional.normalize(emb_b.float(), dim=-1)
    return (a * b).sum(-1)


def trial_fields(trial) -> Tuple[int, str, str]:
    """(label, enrol, test) of a ``Trial`` (attributes) or a ``(label, enrol, test)`` tuple."""
    if hasattr(trial, "enrol"):
        return int(trial.label), str(trial.enrol), str(trial.test)
    label, enrol, test = trial
    return int(label), str(enrol), str(test)


def _embedding_matrix(embeddings: Mapping[str, torch.Tensor], keys: Sequence[str]) -> torch.Tensor:
    missing = [k for k in keys if k not in embeddings]
    if missing:
        raise KeyError(f"no embedding for {len(missing)} trial file(s), e.g. {missing[:3]}")
    mat = torch.stack([torch.as_tensor(embeddings[k]).detach().float().cpu().flatten() for k in keys])
    if not torch.isfinite(mat).all():
        bad = [keys[i] for i in torch.nonzero(~torch.isfinite(mat).all(1)).flatten().tolist()]
        raise ValueError(f"NaN/inf embeddings for {len(bad)} file(s), e.g. {bad[:3]}")
    return torch.nn.functional.normalize(mat, dim=-1)


def score_trials(
    embeddings: Mapping[str, torch.Tensor],
    trials: Iterable,
    cohort_emb: Optional[torch.Tensor] = None,
    topk: int = 300,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Cosine score of each trial (float32, in the trials' order).

    Args:
        embeddings: trial-list path (as written in the list) -> embedding (D,).
        trials: ``Trial`` objects or ``(label, enrol, test)`` tuples.
        cohort_emb: (Nc, D) unlabelled cohort embeddings; when given, AS-norm scores are returned.
        topk: cohort size of AS-norm (the top-k most similar cohort embeddings per utterance).
    """
    fields = [trial_fields(t) for t in trials]
    if not fields:
        raise ValueError("score_trials: the trial list is empty")
    keys = sorted({f[1] for f in fields} | {f[2] for f in fields})
    index = {k: i for i, k in enumerate(keys)}
    mat = _embedding_matrix(embeddings, keys)
    ie = torch.tensor([index[f[1]] for f in fields])
    it = torch.tensor([index[f[2]] for f in fields])
    scores = (mat[ie] * mat[it]).sum(-1)
    if cohort_emb is None:
        return scores
    mean, std = cohort_stats(mat, cohort_emb, topk=topk, chunk_size=chunk_size)
    return asnorm_from_stats(scores, (mean[ie], std[ie]), (mean[it], std[it]))


# --------------------------------------------------------------------------------------------------
# AS-norm
# --------------------------------------------------------------------------------------------------
def _check_cohort(cohort_emb: torch.Tensor) -> torch.Tensor:
    c = torch.as_tensor(cohort_emb).detach().float()
    if c.dim() != 2 or c.shape[0] < 2:
        raise ValueError(f"AS-norm needs a (N >= 2, D) cohort embedding matrix, got shape {tuple(c.shape)}")
    if not torch.isfinite(c).all():
        raise ValueError("the AS-norm cohort contains NaN/inf embeddings")
    return torch.nn.functional.normalize(c, dim=-1)


def cohort_stats(
    emb: torch.Tensor, cohort_emb: torch.Tensor, topk: int = 300, chunk_size: int = 4096
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each embedding's ``topk`` highest cosine scores to the cohort.

    Computed in chunks of ``chunk_size`` rows, so memory stays O(chunk_size * N_cohort).
    """
    c = _check_cohort(cohort_emb)
    e = torch.nn.functional.normalize(torch.as_tensor(emb).detach().float().to(c.device), dim=-1)
    if e.dim() != 2 or e.shape[1] != c.shape[1]:
        raise ValueError(f"embedding shape {tuple(e.shape)} does not match the cohort's {tuple(c.shape)}")
    k = max(2, min(int(topk), c.shape[0]))
    means, stds = [], []
    for start in range(0, e.shape[0], chunk_size):
        top = (e[start : start + chunk_size] @ c.T).topk(k, dim=1).values
        means.append(top.mean(1))
        stds.append(top.std(1))
    mean, std = torch.cat(means).cpu(), torch.cat(stds).cpu()
    return mean, std.clamp(min=1e-6)


def asnorm_from_stats(scores, enrol_stats, test_stats) -> torch.Tensor:
    """Symmetric normalisation 0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t) from precomputed stats."""
    s = torch.as_tensor(scores).float()
    (me, se), (mt, st) = enrol_stats, test_stats
    return 0.5 * ((s - me) / se + (s - mt) / st)


def asnorm(scores, enrol_emb: torch.Tensor, test_emb: torch.Tensor, cohort_emb: torch.Tensor, topk: int = 300, chunk_size: int = 4096) -> torch.Tensor:
    """Adaptive s-norm of per-trial ``scores`` given the trials' (N, D) enrol and test embeddings.

    The cohort must be unlabelled embeddings that do not include the trial utterances (e.g. the
    training set); ``topk`` of them (the most similar to each side) give its mean and std.
    """
    s = torch.as_tensor(scores).float().flatten()
    if len(s) != len(enrol_emb) or len(s) != len(test_emb):
        raise ValueError(f"asnorm: {len(s)} scores but {len(enrol_emb)} enrol / {len(test_emb)} test embeddings")
    return asnorm_from_stats(
        s,
        cohort_stats(enrol_emb, cohort_emb, topk=topk, chunk_size=chunk_size),
        cohort_stats(test_emb, cohort_emb, topk=topk, chunk_size=chunk_size),
    )


# --------------------------------------------------------------------------------------------------
# Per-trial-list metrics and leave-one-speaker-out errors
# --------------------------------------------------------------------------------------------------
def _np64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def split_scores(scores, labels) -> Tuple[np.ndarray, np.ndarray]:
    """Target and non-target scores from per-trial scores and 0/1 labels."""
    s = _np64(scores)
    lab = np.asarray(labels).astype(bool)
    if s.shape != lab.shape:
        raise ValueError(f"{s.shape[0]} scores but {lab.shape[0]} labels")
    if len(lab) == 0:
        raise ValueError("the trial list is empty")
    if lab.all() or not lab.any():
        raise ValueError("the trial list has only one class (all targets or all non-targets): EER is undefined")
    return s[lab], s[~lab]


def eer_of_trials(scores, labels) -> float:
    """EER (in %) of per-trial scores with 0/1 labels."""
    pos, neg = split_scores(scores, labels)
    return 100.0 * eer(pos, neg)[0]


class _SortedEER:
    """EER (in %) of a trial list with some trials left out, from one sort of all scores.

    Same thresholds, float32 rates and tie rule as ``eer`` (the remaining trials' unique scores).
    Leaving r trials out costs O(r log r + log^2 N): FAR - FRR is monotone over the sorted
    thresholds, so the EER point is found by bisection on the counts of the remaining trials.
    """

    def __init__(self, scores, labels):
        s = _np64(scores)
        lab = np.asarray(labels).astype(bool).reshape(-1)
        order = np.argsort(s, kind="stable")
        self.rank = np.empty(len(s), dtype=np.int64)
        self.rank[order] = np.arange(len(s))
        s, self.lab = s[order], lab[order]
        self.ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each group of equal scores
        self.cp = np.cumsum(self.lab)[self.ends]  # targets with score <= group score
        self.cn = np.cumsum(~self.lab)[self.ends]  # non-targets with score <= group score
        self.n_pos, self.n_neg = int(lab.sum()), int((~lab).sum())

    def without(self, removed: np.ndarray) -> float:
        pos = np.sort(self.rank[np.asarray(removed, dtype=np.int64)])
        rl = self.lab[pos]
        rp, rn = pos[rl], pos[~rl]
        n_pos, n_neg = self.n_pos - len(rp), self.n_neg - len(rn)
        if n_pos == 0 or n_neg == 0:
            raise ValueError("only one class left")

        f32 = np.float32

        def rates(j):  # (kept trials up to group j, FRR, FAR), rates rounded to float32 as in ``eer``
            e = self.ends[j]
            cp = self.cp[j] - np.searchsorted(rp, e, side="right")
            cn = self.cn[j] - np.searchsorted(rn, e, side="right")
            return cp + cn, f32(cp) / f32(n_pos), f32(n_neg - cn) / f32(n_neg)

        lo, hi = 0, len(self.ends) - 1  # FAR - FRR = -1 at the last group
        while lo < hi:  # first group with FAR - FRR <= 0
            mid = (lo + hi) // 2
            _, frr, far = rates(mid)
            if far <= frr:
                hi = mid
            else:
                lo = mid + 1
        _, frr, far = rates(lo)
        if lo > 0:
            kept, frr0, far0 = rates(lo - 1)
            r0, r1 = abs(far0 - frr0), abs(far - frr)  # float32, as in ``_eer_index``
            if kept > 0 and (r0 < r1 or (r0 == r1 and abs(float(far0) - float(frr0)) <= float(r0))):
                frr, far = frr0, far0
        return 100.0 * (float(far) + float(frr)) / 2

    def stat(self, mask: np.ndarray) -> float:
        return self.without(np.flatnonzero(~np.asarray(mask, dtype=bool)))


def _fast_eer_stat(scores, labels) -> Callable[[np.ndarray], float]:
    """``stat(mask) -> EER in %`` of the trials selected by ``mask`` (see ``_SortedEER``)."""
    return _SortedEER(scores, labels).stat


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
    speakers, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    ia, ib = inv[: len(a)], inv[len(a) :]
    vals = []
    for s in range(len(speakers)):
        mask = (ia != s) & (ib != s)
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
    """EER in % with its leave-one-test-speaker-out standard error (jackknife over test speakers).

    Same result as ``leave_one_speaker_out`` with an EER statistic, in O(N log N) overall.
    """
    s = _np64(scores)
    split_scores(s, labels)  # validates
    a, b = np.asarray(spk_a), np.asarray(spk_b)
    if len(a) != len(s) or len(b) != len(s):
        raise ValueError(f"{len(s)} scores but {len(a)} / {len(b)} speaker ids")
    sorted_eer = _SortedEER(s, labels)
    full = sorted_eer.without(np.empty(0, dtype=np.int64))
    _, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    trial = np.concatenate([np.arange(len(a)), np.arange(len(b))])
    order = np.argsort(inv, kind="stable")
    bounds = np.flatnonzero(np.r_[True, inv[order][1:] != inv[order][:-1], True])
    vals = []
    for k in range(len(bounds) - 1):
        removed = np.unique(trial[order[bounds[k] : bounds[k + 1]]])
        try:
            vals.append(sorted_eer.without(removed))
        except ValueError:  # only one class left without this speaker
            continue
    n = len(vals)
    if n < 2:
        return {"eer": full, "eer_se": float("nan")}
    v = np.asarray(vals)
    return {"eer": full, "eer_se": float(np.sqrt((n - 1) / n * np.sum((v - v.mean()) ** 2)))}


def speaker_of(path: str) -> str:
    """Speaker id of a VoxCeleb-style trial path ``<spk>/<session>/<utt>.wav`` (its first component)."""
    return str(path).replace("\\", "/").lstrip("/").split("/")[0]


def trial_metrics(
    scores,
    labels,
    p_targets: Sequence[float] = (0.01, 0.05),
    spk_a: Optional[Sequence[str]] = None,
    spk_b: Optional[Sequence[str]] = None,
) -> Dict[str, float]:
    """The results.json entry of one trial list.

    ``{"eer": %, "eer_threshold", "min_dcf_<p>": normalised minDCF for each p_target, "n_trials",
    "n_target", "n_nontarget"}`` plus ``"eer_se"`` (leave-one-speaker-out, in %) when the trials'
    speakers are given.
    """
    pos, neg = split_scores(scores, labels)
    m = eer_and_min_dcf(pos, neg, [float(p) for p in p_targets])
    out: Dict[str, float] = {"eer": 100.0 * m["eer"], "eer_threshold": m["eer_threshold"]}
    if spk_a is not None and spk_b is not None:
        out["eer_se"] = eer_with_se(scores, labels, spk_a, spk_b)["eer_se"]
    for p in p_targets:
        out[f"min_dcf_{float(p):g}"] = m[f"min_dcf_{float(p):g}"]
    out.update(n_trials=int(len(pos) + len(neg)), n_target=int(len(pos)), n_nontarget=int(len(neg)))
    return out


# --------------------------------------------------------------------------------------------------
# Two systems on the same trials
# --------------------------------------------------------------------------------------------------
def read_score_file(path: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``scores_<list>.txt`` of ``evaluate.py`` (``enrol test label score`` per line) → (enrol speakers,
    test speakers, labels, scores)."""
    a, b, lab, sc = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 4:
                raise ValueError(f"{path}:{n}: expected 'enrol test label score', got {line.strip()!r}")
            a.append(speaker_of(parts[0]))
            b.append(speaker_of(parts[1]))
            lab.append(int(parts[2]))
            sc.append(float(parts[3]))
    return np.array(a), np.array(b), np.array(lab), np.array(sc)


def _same_trials(x: Tuple[np.ndarray, ...], ref: Tuple[np.ndarray, ...], where: str) -> None:
    """Refuse two ``read_score_file`` results that do not list the same trials in the same order."""
    if not (np.array_equal(x[2], ref[2]) and np.array_equal(x[0], ref[0]) and np.array_equal(x[1], ref[1])):
        raise ValueError(f"{where} do not score the same trials in the same order")


def _paired_mean(pairs: Sequence[Tuple[Tuple[np.ndarray, ...], Tuple[np.ndarray, ...]]], where: str
                 ) -> Tuple[float, float, List[float]]:
    """Mean over ``pairs`` of EER(x) − EER(ref) (``read_score_file`` results, all of one trial list), with the
    leave-one-test-speaker-out SE of that mean: each left-out speaker removes its trials from every pair at once,
    so the SE counts the test speakers once however many training seeds are averaged (it does not measure the
    spread between seeds: the per-pair values are returned for that)."""
    if not pairs:
        raise ValueError("no pair of score files given")
    first = pairs[0][0]
    stats = []
    for x, ref in pairs:
        _same_trials(x, ref, where)
        _same_trials(x, first, where)
        stats.append((_fast_eer_stat(x[3], x[2]), _fast_eer_stat(ref[3], ref[2])))
    everything = np.ones(len(first[2]), dtype=bool)
    per_pair = [float(fx(everything) - fr(everything)) for fx, fr in stats]
    value, se, _ = leave_one_speaker_out(lambda m: float(np.mean([fx(m) - fr(m) for fx, fr in stats])), first[0], first[1])
    return value, se, per_pair


def _paired(x: Tuple[np.ndarray, ...], ref: Tuple[np.ndarray, ...], where: str) -> Tuple[float, float]:
    """``paired_eer_difference`` of two ``read_score_file`` results (``where`` names them in the refusal)."""
    value, se, _ = _paired_mean([(x, ref)], where)
    return value, se


def paired_eer_difference(scores_x: str, scores_ref: str) -> Tuple[float, float]:
    """EER(x) − EER(ref) in points from two score files of the same trials, with its leave-one-test-speaker-out
    (jackknife) standard error: each left-out speaker removes all its trials from both systems."""
    return _paired(read_score_file(scores_x), read_score_file(scores_ref), f"{scores_x} and {scores_ref}")


def paired_eer_difference_over_seeds(pairs: Sequence[Tuple[str, str]]) -> Tuple[float, float, List[float]]:
    """The mean over training seeds of EER(x) − EER(ref): ``pairs`` = one (x, ref) pair of score files per seed,
    all of the same trial list. Returns (mean difference in points, its leave-one-test-speaker-out SE, the
    per-seed differences). With one pair it is :func:`paired_eer_difference`."""
    where = "the score files " + ", ".join(f"{x} / {r}" for x, r in pairs)
    return _paired_mean([(read_score_file(x), read_score_file(r)) for x, r in pairs], where)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m speechbrain_ssrl.scoring X REF [X2 REF2 ...]``: the paired EER difference of two ``evaluate.py``
    score files; with several pairs (one per training seed, same trials) the mean over the pairs."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m speechbrain_ssrl.scoring",
                                 description="EER(X) - EER(REF) on the same trials, with its leave-one-speaker-out SE; "
                                 "several X REF pairs (one per training seed): their mean difference, the SE leaving "
                                 "each test speaker out of every pair at once")
    ap.add_argument("files", nargs="+", metavar="X REF",
                    help="scores_<list>.txt of system X and of the reference (evaluate.py), then more pairs")
    a = ap.parse_args(argv)
    if len(a.files) % 2:
        ap.error(f"{len(a.files)} score files: give them in pairs X REF (one pair per training seed)")
    names = list(zip(a.files[0::2], a.files[1::2]))
    pairs = [(read_score_file(x), read_score_file(r)) for x, r in names]
    d, se, per = _paired_mean(pairs, "the score files " + ", ".join(f"{x} / {r}" for x, r in names))
    eer_x = [eer_of_trials(x[3], x[2]) for x, _ in pairs]
    eer_ref = [eer_of_trials(r[3], r[2]) for _, r in pairs]
    one = len(pairs) == 1
    out = {"eer_x": eer_x[0] if one else eer_x, "eer_ref": eer_ref[0] if one else eer_ref, "diff": d, "se": se,
           "holds": bool(abs(d) > 2 * se), "n_trials": int(len(pairs[0][0][2]))}
    if not one:
        out.update(diff_per_pair=per, same_sign_every_pair=bool(all(v < 0 for v in per) or all(v > 0 for v in per)),
                   n_pairs=len(pairs))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
