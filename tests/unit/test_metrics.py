"""Tests of speechbrain_ssrl.metrics.pseudo_label_report."""

import math
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from speechbrain_ssrl.metrics import contingency, hungarian_accuracy, pseudo_label_report

torch.set_num_threads(1)


def test_hand_checked_example():
    # clusters:  0: a a b   1: b b c   2: c c
    pred = [0, 0, 0, 1, 1, 1, 2, 2]
    true = ["a", "a", "b", "b", "b", "c", "c", "c"]
    r = pseudo_label_report(pred, true)
    assert r["n_clusters"] == 3 and r["n_classes"] == 3 and r["n_items"] == 8
    assert r["purity"] == pytest.approx(6 / 8)
    assert r["purity_unweighted"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert r["accuracy"] == pytest.approx(6 / 8)  # 0→a, 1→b, 2→c
    # pairs: sum C(n_ij,2) = 3, sum C(a_i,2) = 7, sum C(b_j,2) = 7, C(8,2) = 28
    expected = 7 * 7 / 28
    assert r["ari"] == pytest.approx((3 - expected) / (7 - expected))  # = 5/21
    mi = 2 * (2 / 8) * math.log(16 / 6) + (2 / 8) * math.log(16 / 9) + 2 * (1 / 8) * math.log(8 / 9)
    h = -(2 * (3 / 8) * math.log(3 / 8) + (2 / 8) * math.log(2 / 8))
    assert r["nmi"] == pytest.approx(mi / h)
    assert r["nmi"] == pytest.approx(0.558873, abs=1e-6)


def test_more_clusters_than_classes_and_fewer():
    # 4 clusters, 2 classes: only 2 clusters can be matched, the other items count as errors
    r = pseudo_label_report([0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 0, 0, 1, 1, 1, 1])
    assert r["accuracy"] == pytest.approx(0.5)
    assert r["purity"] == 1.0 and r["purity_unweighted"] == 1.0
    assert r["n_clusters"] == 4 and r["n_classes"] == 2
    # 1 cluster, 3 classes (sizes 3, 2, 1)
    r = pseudo_label_report([7] * 6, [0, 0, 0, 1, 1, 2])
    assert r["accuracy"] == pytest.approx(0.5) and r["purity"] == pytest.approx(0.5)
    assert r["nmi"] == 0.0 and r["ari"] == 0.0
    # identical partitions with renamed labels
    r = pseudo_label_report(torch.tensor([5, 5, 9, 9, 1]), np.array(["x", "x", "y", "y", "z"]))
    assert r["nmi"] == pytest.approx(1.0) and r["ari"] == 1.0 and r["accuracy"] == 1.0
    # both trivial
    r = pseudo_label_report([0, 0, 0], [1, 1, 1])
    assert r["nmi"] == 1.0 and r["ari"] == 1.0 and r["accuracy"] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn_random_labels(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    true = rng.integers(0, 37, n)
    pred = np.where(rng.random(n) < 0.6, true % 23, rng.integers(0, 51, n))  # 51 clusters vs 37 classes
    r = pseudo_label_report(torch.from_numpy(pred), true.tolist())
    assert r["nmi"] == pytest.approx(normalized_mutual_info_score(true, pred), abs=1e-10)
    assert r["ari"] == pytest.approx(adjusted_rand_score(true, pred), abs=1e-10)
    assert r["n_clusters"] == len(set(pred)) and r["n_classes"] == len(set(true))
    # purity and Hungarian accuracy from an explicit dense table
    table = np.zeros((pred.max() + 1, true.max() + 1))
    np.add.at(table, (pred, true), 1)
    table = table[table.sum(1) > 0]
    assert r["purity"] == pytest.approx(table.max(1).sum() / n)
    assert r["purity_unweighted"] == pytest.approx(np.mean(table.max(1) / table.sum(1)))
    from scipy.optimize import linear_sum_assignment

    a, b = linear_sum_assignment(table, maximize=True)
    assert r["accuracy"] == pytest.approx(table[a, b].sum() / n)
    # the sparse matcher agrees with the dense one
    tab = contingency(pred, true)
    assert hungarian_accuracy(tab, "sparse") == pytest.approx(hungarian_accuracy(tab, "dense"))


def test_bad_input():
    with pytest.raises(ValueError, match="items"):
        pseudo_label_report([0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="0 items"):
        pseudo_label_report([], [])
    with pytest.raises(ValueError, match="1-D"):
        pseudo_label_report(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        pseudo_label_report([0.0, float("nan")], [0, 1])


def test_one_million_items_is_fast():
    rng = np.random.default_rng(0)
    n = 1_000_000
    true = rng.integers(0, 6000, n)
    pred = true.copy()
    m = rng.random(n) < 0.3
    pred[m] = 6000 + true[m] % 2000  # 8000 clusters: some speakers split in two
    m = rng.random(n) < 0.05
    pred[m] = rng.integers(0, 8000, int(m.sum()))  # noise links everything (one big component)
    t = time.perf_counter()
    r = pseudo_label_report(torch.from_numpy(pred), true)
    dt = time.perf_counter() - t
    assert r["n_clusters"] == 8000 and r["n_classes"] == 6000
    assert 0.6 < r["accuracy"] < 0.75 and 0.85 < r["nmi"] < 0.95
    assert dt < 20.0, dt  # about 1 s here; generous bound for a loaded CI machine


# ---------------------------------------------------------------------------------------------------------
# The hand-written NMI / ARI / contingency code that scikit-learn replaced (kept here as the reference that
# pins the numbers: the table cell for cell, ARI bit-equal, NMI within a few ulps).
def _old_table(pred, true):
    _, pc = np.unique(np.asarray(pred), return_inverse=True)
    _, tc = np.unique(np.asarray(true), return_inverse=True)
    pc, tc = pc.reshape(-1), tc.reshape(-1)
    K, S = int(pc.max()) + 1, int(tc.max()) + 1
    cells, counts = np.unique(pc.astype(np.int64) * S + tc, return_counts=True)
    return cells // S, cells % S, counts, np.bincount(pc, minlength=K), np.bincount(tc, minlength=S), K, S


def _old_nmi_ari(pred, true):
    rows, cols, counts, a, b, K, S = _old_table(pred, true)
    N = int(a.sum())

    def entropy(sizes):
        p = sizes[sizes > 0] / N
        return float(-(p * np.log(p)).sum())

    if K == S == 1:
        nmi = 1.0
    else:
        nz = counts.astype(np.float64)
        mi = max(float((nz / N * (np.log(nz) + np.log(N) - np.log(a[rows]) - np.log(b[cols]))).sum()), 0.0)
        nmi = mi / max(0.5 * (entropy(a) + entropy(b)), np.finfo(np.float64).eps)
    sum_sq = int((counts.astype(np.int64) ** 2).sum())
    sum_a2, sum_b2 = int((a.astype(np.int64) ** 2).sum()), int((b.astype(np.int64) ** 2).sum())
    tp, fp, fn = sum_sq - N, sum_a2 - sum_sq, sum_b2 - sum_sq
    tn = N * N - fp - fn - sum_sq
    ari = 1.0 if fn == 0 and fp == 0 else 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
    return nmi, ari


def test_sklearn_metrics_pin_the_old_numbers():
    from speechbrain_ssrl.history import _fmt

    for seed in range(200):
        rng = np.random.default_rng(seed)
        n, S, K = int(rng.integers(2, 4000)), int(rng.integers(1, 60)), int(rng.integers(1, 90))
        true = rng.integers(0, S, n)
        pred = np.where(rng.random(n) < rng.random(), true % K, rng.integers(0, K, n))
        if seed % 4 == 0:  # string class names, as in a CSV's spk_id column
            true = np.array([f"id{t:05d}" for t in true])
        r = pseudo_label_report(torch.from_numpy(pred), true.tolist())
        nmi, ari = _old_nmi_ari(pred, true)
        rows, cols, counts, a, b, K_, S_ = _old_table(pred, true)
        tab = contingency(pred, true)
        assert (tab["K"], tab["S"]) == (K_, S_)
        for key, old in (("rows", rows), ("cols", cols), ("counts", counts), ("row_sums", a), ("col_sums", b)):
            assert np.array_equal(tab[key], old), (seed, key)
        assert r["ari"] == ari, seed  # the same integer pair counts and formula: bit-equal
        assert abs(r["nmi"] - nmi) <= 4e-15, (seed, r["nmi"] - nmi)  # summation order: a few ulps
        if len(set(pred.tolist())) == 1 or len(set(true.tolist())) == 1:  # exactly 0 unless both are trivial
            assert r["nmi"] == (1.0 if len(set(pred.tolist())) == len(set(true.tolist())) else 0.0), seed
            continue  # (the old formula left rounding noise, up to 1e-15, where scikit-learn returns 0)
        assert _fmt(r["nmi"]) == _fmt(nmi) and _fmt(r["ari"]) == _fmt(ari)  # history.csv's 6 digits
