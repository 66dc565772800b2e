"""DINO self-distillation (stage 1): projection head, centring and the multi-crop loss.

The teacher (an EMA of the student, see ``ema.py``) sees the global crops; its outputs are centred and
sharpened, ``softmax((t - c) / T_t)``; the student's log-softmax at temperature ``T_s`` on every other
view is trained to match them. The centre ``c`` is an EMA of the teacher's mean output, all-reduced
across DDP ranks, which (with sharpening) prevents collapse.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F


class DINOHead(torch.nn.Module):
    """MLP (BN + GELU) → bottleneck → L2-norm → weight-normalised linear to ``out_dim`` prototypes.

    Args:
        in_dim: embedding size of the encoder (512 in the paper).
        out_dim: number of prototypes (65,536).
        hidden_dim: MLP width (2,048).
        bottleneck_dim: size before the prototype layer (256).
        n_layers: number of linear layers in the MLP (3).
        use_bn: BatchNorm after the hidden linear layers.
        norm_last_layer: fix the weight-norm gain to 1 (as DINO does by default).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        use_bn: bool = True,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        layers: List[torch.nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (max(n_layers, 1) - 1) + [bottleneck_dim]
        for i in range(len(dims) - 1):
            layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                if use_bn:
                    layers.append(torch.nn.BatchNorm1d(dims[i + 1]))
                layers.append(torch.nn.GELU())
        self.mlp = torch.nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.trunc_normal_(m.weight, std=0.02)
                torch.nn.init.zeros_(m.bias)
        self.last_layer = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        gain.data.fill_(1.0)
        if norm_last_layer:
            gain.requires_grad_(False)

    def last_layer_parameters(self) -> List[torch.nn.Parameter]:
        return list(self.last_layer.parameters())

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        if emb.dim() == 3:  # ECAPA returns (B, 1, D)
            emb = emb.squeeze(1)
        z = F.normalize(self.mlp(emb), dim=-1, p=2)
        return self.last_layer(z)


class DINOLoss(torch.nn.Module):
    """Cross-entropy between centred/sharpened teacher targets and student predictions.

    ``forward(student_out, teacher_out)`` takes view-major stacks: ``student_out`` is
    (n_views * B, K) with the ``n_global`` global views first, ``teacher_out`` is (n_global * B, K).
    Every (teacher global view i, student view j != i) pair contributes equally.
    """

    def __init__(self, out_dim: int, n_global: int = 2, teacher_temp: float = 0.04, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.n_global = int(n_global)
        self.teacher_temp = float(teacher_temp)
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_targets(self, teacher_out: torch.Tensor) -> torch.Tensor:
        return F.softmax((teacher_out.float() - self.center) / self.teacher_temp, dim=-1)

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
        n_views = student_out.shape[0] // (teacher_out.shape[0] // self.n_global)
        s = (student_out.float() / self.student_temp).chunk(n_views)
        t = self.teacher_targets(teacher_out).detach().chunk(self.n_global)
        total, n = student_out.new_zeros((), dtype=torch.float32), 0
        for i, ti in enumerate(t):
            for j, sj in enumerate(s):
                if i == j:
                    continue
                total = total + torch.sum(-ti * F.log_softmax(sj, dim=-1), dim=-1).mean()
                n += 1
        return total / max(n, 1)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """c ← m c + (1 - m) mean(teacher outputs), the mean taken over all DDP ranks."""
        batch_sum = teacher_out.float().sum(dim=0, keepdim=True)
        count = torch.tensor([float(teacher_out.shape[0])], device=teacher_out.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_sum)
            torch.distributed.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1 - self.center_momentum)

    @staticmethod
    @torch.no_grad()
    def entropy(probs: torch.Tensor) -> float:
        """Mean entropy (nats) of target distributions: a collapse diagnostic (0 = one-hot collapse)."""
        return float(-(probs * (probs + 1e-12).log()).sum(-1).mean())
