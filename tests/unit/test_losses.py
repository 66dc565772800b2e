"""Tests of speechbrain_ssrl.losses."""

import math

import pytest
import torch
import torch.nn.functional as F
from speechbrain.nnet.losses import AdditiveAngularMargin

from speechbrain_ssrl.losses import AAMSoftmax, margin_logits, weighted_mean

torch.set_num_threads(1)


def _reference(cos, y, margin, scale, easy_margin=False):
    """Per-sample loss with SpeechBrain's AAM logits and torch's cross-entropy."""
    onehot = F.one_hot(y, cos.shape[1]).float()
    logits = AdditiveAngularMargin(margin=margin, scale=scale, easy_margin=easy_margin)(cos, onehot)
    return F.cross_entropy(logits, y, reduction="none")


@pytest.mark.parametrize("easy_margin", [False, True])
def test_per_sample_loss_matches_speechbrain_reference(easy_margin):
    g = torch.Generator().manual_seed(0)
    aam = AAMSoftmax(n_classes=10, emb_dim=6, margin=0.2, scale=32.0, easy_margin=easy_margin)
    emb = torch.randn(12, 6, generator=g)
    y = torch.randint(0, 10, (12,), generator=g)
    cos = F.normalize(emb, dim=1) @ F.normalize(aam.weight.detach(), dim=1).T
    loss = aam(emb, y)
    assert loss.shape == (12,)
    assert torch.allclose(loss, _reference(cos, y, 0.2, 32.0, easy_margin), atol=1e-4)
    assert torch.allclose(aam(emb, y, reduction="mean"), loss.mean())
    # (B, 1, D) embeddings from ECAPA and (B, 1) targets are accepted
    assert torch.allclose(aam(emb[:, None], y[:, None]), loss)


def test_margin_branches_by_hand():
    m, s = 0.2, 10.0
    cos = torch.tensor([[0.5, 0.1], [-0.99, 0.3], [0.3, -0.2]])
    y = torch.tensor([0, 0, 1])
    logits = margin_logits(cos, y, m, s)
    assert logits[0, 0] == pytest.approx(s * math.cos(math.acos(0.5) + m), rel=1e-5)
    th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
    assert -0.99 < th  # second row takes the monotone fallback
    assert logits[1, 0] == pytest.approx(s * (-0.99 - mm), rel=1e-5)
    assert logits[2, 1] == pytest.approx(s * math.cos(math.acos(-0.2) + m), rel=1e-5)
    assert logits[0, 1] == pytest.approx(s * 0.1) and logits[2, 0] == pytest.approx(s * 0.3)
    easy = margin_logits(cos, y, m, s, easy_margin=True)
    assert easy[2, 1] == pytest.approx(s * -0.2)  # cos <= 0: no margin
    assert torch.equal(margin_logits(cos, y, 0.0, s), s * cos)


def test_init_from_centroids():
    centroids = torch.tensor([[3.0, 0.0], [0.0, -2.0], [1.0, 1.0]])
    aam = AAMSoftmax(centroids=centroids)
    assert aam.weight.shape == (3, 2) and aam.n_classes == 3 and aam.n_active == 3
    assert torch.allclose(aam.weight.norm(dim=1), torch.ones(3))
    assert torch.allclose(aam.weight[0], torch.tensor([1.0, 0.0]))
    emb = torch.tensor([[5.0, 0.1], [0.2, -9.0]])
    labels, _ = aam.nearest(emb)
    assert labels.tolist() == [0, 1]
    centroids[0, 0] = 100.0  # a copy, not a view
    assert aam.weight[0, 0] == 1.0
    with pytest.raises(ValueError):
        AAMSoftmax(n_classes=4, centroids=torch.randn(3, 2))
    with pytest.raises(ValueError):
        AAMSoftmax(n_classes=4)


def test_pruned_classes_masked_never_predicted_zero_gradient():
    torch.manual_seed(0)
    aam = AAMSoftmax(n_classes=6, emb_dim=4)
    assert aam.prune(torch.tensor([1, 4])) == 2
    assert aam.prune([4]) == 0
    assert aam.n_active == 4 and aam.pruned_ids().tolist() == [1, 4]
    # embeddings that point right at the pruned prototypes
    emb = aam.weight.detach()[[1, 4, 1, 4]].clone().requires_grad_(True)
    labels, cos = aam.nearest(emb)
    assert not set(labels.tolist()) & {1, 4}
    assert torch.isinf(cos[:, [1, 4]]).all()
    y = torch.tensor([0, 2, 3, 5])
    loss = aam(emb, y)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.equal(aam.weight.grad[[1, 4]], torch.zeros(2, 4))
    assert aam.weight.grad[[0, 2, 3, 5]].abs().sum() > 0
    assert torch.isfinite(emb.grad).all()
    # reference on the active classes only
    keep = torch.tensor([0, 2, 3, 5])
    cos_active = F.normalize(emb.detach(), dim=1) @ F.normalize(aam.weight.detach()[keep], dim=1).T
    ref = _reference(cos_active, torch.tensor([0, 1, 2, 3]), aam.margin, aam.scale)
    assert torch.allclose(loss.detach(), ref, atol=1e-4)


def test_pruned_target_error_and_prune_all_error():
    aam = AAMSoftmax(n_classes=3, emb_dim=2)
    aam.prune([2])
    with pytest.raises(ValueError, match="pruned"):
        aam(torch.randn(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="pruned"):
        aam.teacher_loss(aam.cosine(torch.randn(1, 2)), torch.tensor([2]))
    with pytest.raises(IndexError):
        aam(torch.randn(1, 2), torch.tensor([3]))
    with pytest.raises(ValueError):
        aam.prune(torch.tensor([True, True, False]))


def test_teacher_loss_plain_ce():
    g = torch.Generator().manual_seed(1)
    aam = AAMSoftmax(n_classes=5, emb_dim=3, scale=20.0)
    aam.prune([3])
    emb = torch.randn(7, 3, generator=g)
    labels, cos = aam.nearest(emb)
    lam = aam.teacher_loss(cos, labels)
    raw = aam.cosine(emb)[:, [0, 1, 2, 4]]
    remap = torch.tensor([0, 1, 2, -1, 3])[labels]
    assert torch.allclose(lam, F.cross_entropy(20.0 * raw, remap, reduction="none"), atol=1e-5)
    assert torch.allclose(aam.teacher_loss(aam.cosine(emb), labels), lam)  # unmasked cos is masked
    with_margin = aam.teacher_loss(cos, labels, scale=20.0, margin=0.2)
    assert (with_margin >= lam).all() and (with_margin > lam).any()


def test_weighted_mean():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    w = torch.tensor([1.0, 0.0, 0.5, 0.5])
    out = weighted_mean(losses, w)
    assert out.item() == pytest.approx((1 + 1.5 + 2.0) / 2.0)
    out.backward()
    assert torch.allclose(losses.grad, w / 2.0)
    zero = weighted_mean(torch.tensor([1.0, 3.0]), torch.zeros(2))
    assert zero.item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        weighted_mean(torch.ones(3), torch.ones(2))


def test_state_dict_resumable():
    aam = AAMSoftmax(centroids=torch.randn(5, 3))
    aam.prune([0, 2])
    state = aam.state_dict()
    assert set(state) == {"weight", "active"}
    other = AAMSoftmax(n_classes=5, emb_dim=3)
    other.load_state_dict(state)
    assert torch.equal(other.active, aam.active) and torch.equal(other.weight, aam.weight)


def test_large_case_runs():
    aam = AAMSoftmax(centroids=torch.randn(8000, 512))
    aam.prune(torch.arange(0, 8000, 3))
    y = torch.arange(1, 160, 3)[:32]
    loss = aam(torch.randn(32, 1, 512), y)
    assert loss.shape == (32,) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert aam.weight.grad[::3].abs().sum() == 0
