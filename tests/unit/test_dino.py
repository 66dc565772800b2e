"""DINO head and loss."""

import math

import torch

from speechbrain_ssrl.dino import DINOHead, DINOLoss

torch.set_num_threads(1)


def test_head_shapes_and_fixed_gain():
    head = DINOHead(16, out_dim=64, hidden_dim=32, bottleneck_dim=8)
    out = head(torch.randn(5, 1, 16))
    assert out.shape == (5, 64)
    gain = head.last_layer.parametrizations.weight.original0
    assert not gain.requires_grad and torch.all(gain == 1)
    # with unit gain and L2-normalised bottleneck, every logit is a cosine
    assert out.abs().max() <= 1.0 + 1e-5


def test_loss_matches_hand_computation():
    torch.manual_seed(0)
    B, K = 3, 7
    loss_fn = DINOLoss(K, n_global=2, teacher_temp=0.5, student_temp=0.2)
    t = torch.randn(2 * B, K)
    s = torch.randn(4 * B, K)
    tv = torch.softmax(t / 0.5, dim=-1).chunk(2)
    sv = torch.log_softmax(s / 0.2, dim=-1).chunk(4)
    ref, n = 0.0, 0
    for i in range(2):
        for j in range(4):
            if i != j:
                ref += float((-tv[i] * sv[j]).sum(-1).mean())
                n += 1
    assert math.isclose(float(loss_fn(s, t)), ref / n, rel_tol=1e-5)


def test_center_update_and_entropy():
    loss_fn = DINOLoss(4, center_momentum=0.9)
    loss_fn.update_center(torch.ones(6, 4))
    assert torch.allclose(loss_fn.center, torch.full((1, 4), 0.1))
    uniform = torch.full((2, 4), 0.25)
    assert math.isclose(DINOLoss.entropy(uniform), math.log(4), rel_tol=1e-5)


def test_no_gradient_to_teacher():
    loss_fn = DINOLoss(5)
    s = torch.randn(8, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    loss_fn(s, t).backward()
    assert s.grad is not None and t.grad is None
