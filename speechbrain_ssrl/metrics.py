"""Pseudo-label quality against true speaker ids (diagnostics only: true labels never enter training).

:func:`pseudo_label_report` gives, for predicted cluster labels and true class labels,

* ``nmi``: normalised mutual information with the arithmetic-mean normalisation
  ``MI / ((H(pred) + H(true)) / 2)`` (scikit-learn's default);
* ``ari``: adjusted Rand index (the pair-counting form scikit-learn uses, in exact integers);
* ``accuracy``: Hungarian accuracy, the best one-to-one matching of clusters to classes
  (``scipy.optimize.linear_sum_assignment`` maximising matched items); when the numbers of clusters
  and classes differ, items of unmatched clusters/classes count as errors;
* ``purity``: sample-weighted, ``sum_k max_c n_kc / N``; ``purity_unweighted``: the mean over
  clusters of ``max_c n_kc / n_k``;
* ``n_clusters``, ``n_classes``, ``n_items``.

Everything works on a compact contingency table (``np.unique`` of the label pairs + ``bincount``), so
1 M items take about a second; the Hungarian matching uses scipy's dense solver on small tables and
its sparse one (on the non-zero cells only) on large ones (K x S = 8000 x 6000: ~0.4 s instead of ~2 s).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

__all__ = ["pseudo_label_report", "contingency", "hungarian_accuracy"]


def _to_numpy(labels, name: str) -> np.ndarray:
    try:
        import torch

        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(labels)
    if arr.ndim == 2 and 1 in arr.shape:  # a column or row vector
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN/inf")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must be integer labels (got non-integer floats)")
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "O":
        arr = arr.astype(str)
    return arr


def _codes(arr: np.ndarray) -> Tuple[np.ndarray, int]:
    """Dense codes 0..n-1 of any labels (ints or strings)."""
    if arr.dtype.kind in "iub" and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if hi - lo < 4 * arr.size + 1024:  # small range: a bincount is faster than sorting
            present = np.bincount(arr - lo, minlength=hi - lo + 1) > 0
            remap = np.cumsum(present) - 1
            return remap[arr - lo].astype(np.int64), int(present.sum())
    uniq, inv = np.unique(arr, return_inverse=True)
    return inv.reshape(-1).astype(np.int64), int(uniq.size)


def contingency(pred, true) -> Dict[str, Any]:
    """Compact contingency table: non-zero cells (rows = clusters, cols = classes, counts) and margins."""
    p = _to_numpy(pred, "pred_labels")
    t = _to_numpy(true, "true_labels")
    if p.shape[0] != t.shape[0]:
        raise ValueError(f"pred_labels has {p.shape[0]} items but true_labels has {t.shape[0]}")
    if p.shape[0] == 0:
        raise ValueError("no labels given (0 items)")
    pc, K = _codes(p)
    tc, S = _codes(t)
    key = pc * S + tc
    if K * S < 4 * key.size + 1024:
        cnt = np.bincount(key, minlength=K * S)
        cells = np.nonzero(cnt)[0]
        counts = cnt[cells]
    else:
        cells, counts = np.unique(key, return_counts=True)
    return dict(
        rows=cells // S, cols=cells % S, counts=counts.astype(np.int64),
        row_sums=np.bincount(pc, minlength=K).astype(np.int64),
        col_sums=np.bincount(tc, minlength=S).astype(np.int64),
        K=K, S=S, N=int(p.shape[0]),
    )


def _entropy(sizes: np.ndarray, n: int) -> float:
    p = sizes[sizes > 0] / n
    return float(-(p * np.log(p)).sum())


def hungarian_accuracy(table: Dict[str, Any], method: str = "auto") -> float:
    """Best one-to-one cluster → class matching (items of unmatched clusters/classes are errors).

    ``method="dense"``: ``scipy.optimize.linear_sum_assignment`` on the dense K x S table (maximise);
    ``"sparse"``: scipy's sparse solver (``min_weight_full_bipartite_matching``, LAPJVsp) on the non-zero
    cells, with one zero-gain "stay unmatched" column per cluster so that a full matching always exists
    (cost ``w_max + 1 - n_kc`` for a real cell, ``w_max + 1`` for staying unmatched: minimising the cost
    maximises the matched items). Both give the same optimum; ``"auto"`` = dense up to 1e6 cells.
    """
    K, S, N = table["K"], table["S"], table["N"]
    rows, cols, counts = table["rows"], table["cols"], table["counts"]
    if method == "auto":
        method = "dense" if K * S <= 1_000_000 else "sparse"
    if method == "sparse":
        try:
            from scipy.sparse import csr_matrix
            from scipy.sparse.csgraph import min_weight_full_bipartite_matching
        except ImportError:  # pragma: no cover - old scipy
            method = "dense"
    if method == "sparse":
        big = int(counts.max()) + 1
        r = np.concatenate([rows, np.arange(K)])
        c = np.concatenate([cols, S + np.arange(K)])
        w = np.concatenate([big - counts, np.full(K, big)]).astype(np.float64)
        graph = csr_matrix((w, (r, c)), shape=(K, S + K))
        ri, ci = min_weight_full_bipartite_matching(graph)
        real = ci < S
        # gain of the matched real cells: look them up in the (sorted) cell keys
        keys = rows.astype(np.int64) * S + cols
        want = ri[real].astype(np.int64) * S + ci[real]
        pos = np.searchsorted(keys, want)
        return float(counts[pos].sum()) / N
    if method != "dense":
        raise ValueError(f"method must be 'auto', 'dense' or 'sparse', got {method!r}")
    from scipy.optimize import linear_sum_assignment

    dense = np.zeros((K, S), dtype=np.float64)
    dense[rows, cols] = counts
    a, b = linear_sum_assignment(dense, maximize=True)
    return float(dense[a, b].sum()) / N


def pseudo_label_report(pred_labels, true_labels) -> Dict[str, Any]:
    """NMI, ARI, Hungarian accuracy, purity (weighted and unweighted) and counts of clusters and classes.

    Args:
        pred_labels: predicted cluster ids (torch tensor, numpy array or list of ints).
        true_labels: true class ids (ints or strings), same length.
    Returns:
        dict with ``nmi, ari, accuracy, purity, purity_unweighted, n_clusters, n_classes, n_items``.
    """
    tab = contingency(pred_labels, true_labels)
    N, K, S = tab["N"], tab["K"], tab["S"]
    counts = tab["counts"]
    a = tab["row_sums"]  # cluster sizes
    b = tab["col_sums"]  # class sizes

    # NMI (arithmetic)
    if K == S == 1:
        nmi = 1.0
    else:
        nz = counts.astype(np.float64)
        mi = float((nz / N * (np.log(nz) + np.log(N) - np.log(a[tab["rows"]]) - np.log(b[tab["cols"]]))).sum())
        mi = max(mi, 0.0)
        h = 0.5 * (_entropy(a, N) + _entropy(b, N))
        nmi = mi / max(h, np.finfo(np.float64).eps)

    # ARI from the pair confusion matrix, in exact integers
    sum_sq = int((counts.astype(np.int64) ** 2).sum())  # <= N^2: exact in int64 up to N ~ 3e9
    sum_a2 = int((a.astype(np.int64) ** 2).sum())
    sum_b2 = int((b.astype(np.int64) ** 2).sum())
    tp = sum_sq - N
    fp = sum_a2 - sum_sq  # pairs together in a cluster, apart in the classes
    fn = sum_b2 - sum_sq
    tn = N * N - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        ari = 1.0
    else:
        ari = 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))

    # purity
    order = np.lexsort((-counts, tab["rows"]))  # per cluster, largest cell first
    first = np.ones(order.size, dtype=bool)
    first[1:] = tab["rows"][order][1:] != tab["rows"][order][:-1]
    best = counts[order][first]  # one per (non-empty) cluster, in cluster order
    purity = float(best.sum()) / N
    purity_unweighted = float(np.mean(best / a[a > 0]))

    return dict(
        nmi=float(nmi), ari=float(ari), accuracy=float(hungarian_accuracy(tab)), purity=purity,
        purity_unweighted=purity_unweighted, n_clusters=int(K), n_classes=int(S), n_items=int(N),
    )
