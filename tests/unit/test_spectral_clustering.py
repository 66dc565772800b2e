"""Tests of speechbrain_ssrl.spectral_clustering and ``initial_clustering(method="spectral")``."""

import logging

import pytest
import torch

from speechbrain_ssrl.metrics import pseudo_label_report
from speechbrain_ssrl.spectral_clustering import check_method, spectral_clustering

torch.set_num_threads(1)


def _arcs(n_groups=6, per=30, seed=0):
    """Groups that are arcs, each on its own plane (orthogonal to the others'): an arc's two ends are
    closer to each other (cosine 0.54) than to any other group (0): six connected parts of the k-NN graph."""
    g = torch.Generator().manual_seed(seed)
    dim = 2 * n_groups
    rows, truth = [], []
    for c in range(n_groups):
        t = torch.linspace(0, 1.0, per) + 0.01 * torch.randn(per, generator=g)
        block = torch.zeros(per, dim)
        block[:, 2 * c], block[:, 2 * c + 1] = torch.cos(t), torch.sin(t)
        rows.append(block + 0.002 * torch.randn(per, dim, generator=g))
        truth += [c] * per
    return torch.nn.functional.normalize(torch.cat(rows), dim=1), torch.tensor(truth)


def test_recovers_separated_groups_with_ids_in_order_of_appearance():
    x, truth = _arcs()
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))
    x, truth = x[perm], truth[perm]
    lab = spectral_clustering(3.0 * x, 6, n_neighbors=5, seed=0)  # scale does not matter: rows are normalised
    assert pseudo_label_report(lab, truth)["nmi"] == pytest.approx(1.0)
    firsts = [int(torch.nonzero(lab == c)[0]) for c in range(int(lab.max()) + 1)]
    assert firsts == sorted(firsts) and firsts[0] == 0  # ids 0..m-1 by first appearance
    assert torch.equal(lab, spectral_clustering(x, 6, n_neighbors=5, seed=0))  # same seed, same labels


def test_refusals():
    x, _ = _arcs(n_groups=2, per=5)
    with pytest.raises(ValueError, match="use cluster_method: kmeans"):
        spectral_clustering(x, 3, max_cells=20)
    with pytest.raises(ValueError, match="between 1 and"):
        spectral_clustering(x, x.shape[0])
    with pytest.raises(ValueError, match="cluster_method: 'ward' is not one of kmeans, spectral"):
        check_method("ward", 10)
    with pytest.raises(ValueError, match="spectral_neighbors"):
        check_method("spectral", 0)
    assert check_method("kmeans", 0) == "kmeans"  # the neighbours matter to spectral only


def test_initial_clustering_spectral_saves_method_and_full_centroids(tmp_path, caplog):
    """method spectral: labels from the k-NN graph, k centroids without NaN (empty ids get unit rows), the method
    in the saved config; a reuse with k-means settings warns; a start from labels is refused."""
    import csv

    from speechbrain_ssrl.initial_clustering import initial_clustering

    x, truth = _arcs()
    csv_path = tmp_path / "train.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav", "start", "stop", "spk_id"])
        for i, t in enumerate(truth.tolist()):
            w.writerow([f"u{i}", "1.0", f"/nowhere/{i}.wav", "0", "16000", f"s{t}"])
    res = initial_clustering(None, str(csv_path), str(tmp_path / "a"), 6, embeddings=x, method="spectral",
                             n_neighbors=5, progress=False)
    assert res["report"]["nmi"] == pytest.approx(1.0)
    assert res["centroids"].shape == (6, x.shape[1]) and not torch.isnan(res["centroids"]).any()
    assert torch.allclose(res["centroids"].norm(dim=1), torch.ones(6), atol=1e-5)
    assert (res["config"]["method"], res["config"]["n_neighbors"]) == ("spectral", 5)
    with caplog.at_level(logging.WARNING):
        again = initial_clustering(None, str(csv_path), str(tmp_path / "a"), 6, embeddings=x, progress=False)
    assert torch.equal(again["labels"], res["labels"]) and "method" in caplog.text  # reused, the difference named
    km = initial_clustering(None, str(csv_path), str(tmp_path / "b"), 6, embeddings=x, progress=False, seed=0)
    assert "method" not in km["config"]  # k-means files keep their old config
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # and the other way: a k-means file reused for spectral is named too
        initial_clustering(None, str(csv_path), str(tmp_path / "b"), 6, embeddings=x, method="spectral", progress=False)
    assert "method" in caplog.text
    with pytest.raises(ValueError, match="recluster_init: labels is"):
        initial_clustering(None, str(csv_path), str(tmp_path / "c"), 6, embeddings=x, method="spectral",
                           init_labels=truth, progress=False)
    # more clusters than the graph yields: the empty ids get random unit rows
    many = initial_clustering(None, str(csv_path), str(tmp_path / "d"), 60, embeddings=x, method="spectral",
                              n_neighbors=5, progress=False)
    assert many["centroids"].shape[0] == 60 and not torch.isnan(many["centroids"]).any()


def test_merge_connected_joins_the_halves_of_split_groups_and_nothing_else():
    """Six arcs, each cut in two halves (12 clusters): each half's neighbour edges lead into its other half,
    never into another arc, so a threshold joins exactly the halves; pairs without an edge are not listed."""
    from speechbrain_ssrl.spectral_clustering import cluster_connectivity, merge_connected

    x, truth = _arcs(per=20)
    halves = 2 * truth + (torch.arange(truth.numel()) % 20 >= 10).long()  # the arc's first / second half
    a, b, conn = cluster_connectivity(x, halves, n_neighbors=4)
    assert len(a) == 6 and all(int(p) // 2 == int(q) // 2 for p, q in zip(a, b))  # only the halves touch
    assert 0 < conn.min() and conn.max() <= 1 and list(conn) == sorted(conn, reverse=True)
    merged, removed = merge_connected(x, halves, 0.01, n_neighbors=4)
    assert removed == 6 and pseudo_label_report(merged, truth)["nmi"] == pytest.approx(1.0)
    assert merged.tolist() == torch.unique(merged, return_inverse=True)[1].tolist()  # ids 0..m-1 ...
    firsts = [int(torch.nonzero(merged == c)[0]) for c in range(int(merged.max()) + 1)]
    assert firsts == sorted(firsts)  # ... in order of first appearance
    same, removed = merge_connected(x, halves, 1.0, n_neighbors=4)  # a half sends edges within itself too
    assert removed == 0 and torch.equal(same, halves)
    same, removed = merge_connected(x, halves, None)
    assert removed == 0 and torch.equal(same, halves)
    few, removed = merge_connected(x, halves, 0.01, n_neighbors=4, min_clusters=9)  # the 3 strongest pairs only
    assert removed == 3 and int(torch.unique(few).numel()) == 9
    top3 = {(int(p), int(q)) for p, q in zip(a[:3], b[:3])}
    joined = {(int(p), int(q)) for p, q in zip(a, b) if bool((few[halves == p][0] == few[halves == q][0]))}
    assert joined == top3


def test_union_pairs_is_transitive_and_the_threshold_is_checked():
    from speechbrain_ssrl.reclustering import recluster_merge_connectivity as check_merge_connectivity
    from speechbrain_ssrl.spectral_clustering import merge_connected, union_pairs

    y = torch.tensor([3, 0, 1, 2, 3, 4])
    assert union_pairs(y, [(1, 2), (2, 3)]).tolist() == [0, 1, 0, 0, 0, 2]  # 1-2-3 one cluster; ids by appearance
    assert union_pairs(y, []).tolist() == [0, 1, 2, 3, 0, 4]
    assert check_merge_connectivity(None) is None and check_merge_connectivity("null") is None
    assert check_merge_connectivity(0.2) == 0.2 and check_merge_connectivity(1) == 1.0
    for bad in (0, -0.1, 1.5, "x", True, float("nan")):
        with pytest.raises(ValueError, match="recluster_merge_connectivity: .* is not a number in \\(0, 1\\]"):
            check_merge_connectivity(bad)
    with pytest.raises(ValueError, match="min_connectivity: 0 must be in"):
        merge_connected(torch.eye(3), torch.tensor([0, 1, 2]), 0)
