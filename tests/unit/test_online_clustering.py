"""Online clustering alternatives: prototype re-estimation, Lloyd steps, Sinkhorn, kNN vote, confidence gate, teacher rule."""

import pytest
import torch
import torch.nn.functional as F

from speechbrain_ssrl import online_clustering as oc
from speechbrain_ssrl.schedules import TwoSegmentCosine


def blobs(n_per=50, k=4, d=8, spread=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, d, generator=g), dim=1)
    x = centres.repeat_interleave(n_per, 0) + spread * torch.randn(k * n_per, d, generator=g)
    return F.normalize(x, dim=1), torch.arange(k).repeat_interleave(n_per), centres


def test_cluster_means_are_normalised_means_and_empty_clusters_keep_their_row():
    x, y, c = blobs()
    old = torch.randn(5, 8)
    m = oc.cluster_means(x, y, old)
    assert torch.allclose(m[:4], F.normalize(torch.stack([x[y == k].mean(0) for k in range(4)]), dim=1), atol=1e-6)
    assert torch.allclose(m[4], F.normalize(old[4], dim=0))


def test_lloyd_steps_correct_noisy_labels_and_keep_pruned_clusters_dead():
    x, y, c = blobs()
    noisy = y.clone()
    g = torch.Generator().manual_seed(1)
    flip = torch.rand(y.numel(), generator=g) < 0.3
    noisy[flip] = torch.randint(0, 4, (int(flip.sum()),), generator=g)
    active = torch.tensor([True, True, True, True, False])
    protos0 = torch.cat([c, c[:1]])  # the pruned 5th row sits on top of cluster 0
    protos, lab = oc.spherical_lloyd(x, noisy, protos0, active, n_iter=3)
    assert torch.equal(lab, y)  # well-separated blobs: every flipped label corrected
    assert not (lab == 4).any()
    # 0 iterations: only the means, labels unchanged
    _, lab0 = oc.spherical_lloyd(x, noisy, protos0, active, n_iter=0)
    assert torch.equal(lab0, noisy)


def test_relabel_with_mean_prototypes_follows_the_representation():
    x, y, c = blobs()
    stale = F.normalize(c + 0.8 * torch.randn(4, 8, generator=torch.Generator().manual_seed(3)), dim=1)
    active = torch.ones(4, dtype=torch.bool)
    y_cls, p_cls = oc.relabel(x, y, stale, active, oc.RelabelConfig())
    assert p_cls is None
    y_mean, p_mean = oc.relabel(x, y, stale, active, oc.RelabelConfig(prototypes="mean"))
    assert torch.equal(y_mean, y) and p_mean.shape == (4, 8)
    assert (y_cls == y).float().mean() <= (y_mean == y).float().mean()


def test_sinkhorn_balances_a_hub_prototype():
    # every row is nearest to prototype 0 (a hub); Sinkhorn spreads the rows over all active clusters
    g = torch.Generator().manual_seed(0)
    protos = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    x = F.normalize(protos[0] + 0.3 * torch.randn(400, 8, generator=g) + 0.2 * protos[1:].repeat(134, 1)[:400], dim=1)
    active = torch.tensor([True, True, True, False])
    near = oc.nearest_assign(x, protos, active)
    sk = oc.sinkhorn_assign(x, protos, active, epsilon=0.05, n_iter=10)
    assert torch.bincount(near, minlength=4)[0] > 300
    counts = torch.bincount(sk, minlength=4)
    assert counts[3] == 0 and counts[:3].min() > 80  # about 400 / 3 each, none to the pruned cluster


def test_sinkhorn_chunked_equals_whole(monkeypatch):
    x, y, c = blobs(n_per=30)
    active = torch.ones(4, dtype=torch.bool)
    whole = oc.sinkhorn_assign(x, c, active)
    monkeypatch.setattr(oc, "CHUNK", 7)
    assert torch.equal(oc.sinkhorn_assign(x, c, active), whole)


def test_knn_vote_corrects_isolated_labels_and_keeps_shared_ones():
    x, y, c = blobs(spread=0.1)
    noisy = y.clone()
    g = torch.Generator().manual_seed(2)
    flip = torch.rand(y.numel(), generator=g) < 0.2
    noisy[flip] = (y[flip] + torch.randint(1, 4, (int(flip.sum()),), generator=g)) % 4
    fixed = oc.knn_vote(x, noisy, k=5, self_weight=3.0)
    acc_before, acc_after = (noisy == y).float().mean(), (fixed == y).float().mean()
    assert acc_after > 0.93 and acc_after > acc_before + 0.15  # most flipped rows outvoted
    assert torch.equal(oc.knn_vote(x, y, k=5, self_weight=3.0), y)  # correct labels kept
    assert torch.equal(oc.knn_vote(x, noisy, k=5, self_weight=5.0), noisy)  # own label = all 5 neighbours: no change
    # the own label counts as self_weight neighbours: at 3, a row with 3 of its 5 neighbours on another label keeps
    # its own (3 < 3 + 2); at the yaml's 3.5 a row moves only when all 5 agree on another label
    pts = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.01], [1.0, 0.02], [1.0, 0.03], [1.0, -0.01], [1.0, -0.02]]), dim=1)
    lab = torch.tensor([0, 1, 1, 1, 0, 0])
    assert oc.knn_vote(pts, lab, k=5, self_weight=3.0)[0] == 0
    assert oc.knn_vote(pts, torch.tensor([0, 1, 1, 1, 1, 0]), k=5, self_weight=3.5)[0] == 0  # 4 of 5: kept
    assert oc.knn_vote(pts, torch.tensor([0, 1, 1, 1, 1, 1]), k=5, self_weight=3.5)[0] == 1  # 5 of 5: moved


def test_knn_vote_chunked_equals_whole_and_relabel_uses_it(monkeypatch):
    x, y, c = blobs(n_per=30, spread=0.4)
    noisy = torch.roll(y, 7)
    whole = oc.knn_vote(x, noisy, k=5, self_weight=1.0)
    cfg = oc.RelabelConfig(assignment="knn", knn_k=5, knn_self_weight=1.0)
    assert cfg.at_epoch_end
    y_hat, protos = oc.relabel(x, noisy, c, torch.ones(4, dtype=torch.bool), cfg)
    assert torch.equal(y_hat, whole) and protos is None
    monkeypatch.setattr(oc, "CHUNK", 7)
    assert torch.equal(oc.knn_vote(x, noisy, k=5, self_weight=1.0), whole)
    with pytest.raises(ValueError, match="relabel_min_margin: 0"):
        oc.RelabelConfig(assignment="knn", min_margin=0.1)
    with pytest.raises(ValueError, match="relabel_knn_k"):
        oc.RelabelConfig(assignment="knn", knn_k=0)


def test_confidence_gate_keeps_the_label_unless_the_new_one_wins_by_the_margin():
    cos = torch.tensor([[0.50, 0.55, 0.1], [0.2, 0.9, 0.1], [float("-inf"), 0.3, 0.2]])
    current = torch.tensor([0, 0, 0])
    y_hat = cos.argmax(1)
    assert oc.gate_by_margin(cos, current, y_hat, 0.1).tolist() == [0, 1, 1]  # row 2: current label pruned
    assert torch.equal(oc.gate_by_margin(cos, current, y_hat, 0.0), y_hat)


def test_margin_at_label_rule_moves_off_a_narrowly_best_label():
    cos = torch.tensor([[0.60, 0.55, 0.1], [0.9, 0.2, 0.1]])
    current = torch.tensor([0, 0])
    nearest = oc.rule_assign(cos, current, oc.RelabelConfig())
    release = oc.rule_assign(cos, current, oc.RelabelConfig(teacher_rule="margin_at_label", label_margin=0.2))
    assert nearest.tolist() == [0, 0] and release.tolist() == [1, 0]


def test_config_refuses_unknown_values():
    with pytest.raises(ValueError, match="relabel_prototypes"):
        oc.RelabelConfig(prototypes="centroid")
    with pytest.raises(ValueError, match="teacher_rule"):
        oc.RelabelConfig(teacher_rule="x")
    assert oc.RelabelConfig(assignment="sinkhorn").at_epoch_end and not oc.RelabelConfig().at_epoch_end


def test_update_phase_warmup_ramps_from_the_fixed_phase_end():
    s = TwoSegmentCosine(10, 30, 1e-3, 1e-4, 2e-3, 1e-5, upd_warmup_steps=5)
    assert s(9) == pytest.approx(1e-4, rel=0.3)
    ramp = [s(10 + i) for i in range(5)]
    assert all(a < b for a, b in zip(ramp, ramp[1:])) and ramp[-1] == pytest.approx(2e-3)
    assert s(29) < s(15)
    # without warm-up: the old schedule, unchanged
    s0 = TwoSegmentCosine(10, 30, 1e-3, 1e-4, 2e-3, 1e-5)
    assert s0(10) == pytest.approx(2e-3)
