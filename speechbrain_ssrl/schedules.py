"""Step-indexed schedules (learning rate, weight decay, temperatures).

All schedules are pure functions of the global optimiser step, which ``Brain`` checkpoints
(``brain.ckpt``), so a resumed run continues them exactly.

Why not ``torch.optim.lr_scheduler`` or ``speechbrain.nnet.schedulers`` (measured, #14): torch's
``SequentialLR(LinearLR(1/W, 1, W-1), CosineAnnealingLR(T-W, eta_min))`` is the same curve as
``WarmupCosine`` in exact arithmetic, but its chained (recursive) updates give other floats at 59,311 of
60,001 steps (relative error up to 1e-12; W = 3,000, T = 60,000), and even ``LambdaLR`` around ours
differs in the last bit at 4,965 steps (lr = base * (ours / base)); both also keep state that would
have to be checkpointed next to ``brain.ckpt``. ``TwoSegmentCosine``'s second cosine with its linear
ramp from the first segment's end has no torch or SpeechBrain counterpart, and SpeechBrain's
schedulers do not give this curve (``CyclicCosineScheduler`` warms up like Noam and anneals to 0,
``WarmCoolDecayLRSchedule`` decays exponentially). Ours stays, so the logged lr stays identical.
"""

from __future__ import annotations

import math


def cosine(step: float, total: float, start: float, end: float) -> float:
    """Cosine from ``start`` (step 0) to ``end`` (step ``total`` and after)."""
    if total <= 0:
        return float(end)
    t = min(max(step, 0), total) / total
    return float(end + 0.5 * (start - end) * (1 + math.cos(math.pi * t)))


class WarmupCosine:
    """Linear warm-up from ~0 to ``base`` over ``warmup_steps``, then cosine to ``final`` at ``total_steps``."""

    def __init__(self, base: float, final: float, warmup_steps: int, total_steps: int) -> None:
        self.base, self.final = float(base), float(final)
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base * (step + 1) / self.warmup_steps
        return cosine(step - self.warmup_steps, self.total_steps - self.warmup_steps, self.base, self.final)


class TwoSegmentCosine:
    """SSRL's learning rate: cosine ``fix_start → fix_end`` over the label-fixed steps, then
    cosine ``upd_start → upd_end`` over the label-update steps; with ``upd_warmup_steps`` the update
    segment opens with a linear ramp ``fix_end → upd_start`` over that many steps (no jump at the restart)."""

    def __init__(
        self, fix_steps: int, total_steps: int, fix_start: float, fix_end: float, upd_start: float, upd_end: float,
        upd_warmup_steps: int = 0,
    ) -> None:
        self.fix_steps, self.total_steps = int(fix_steps), int(total_steps)
        self.fix = (float(fix_start), float(fix_end))
        self.upd = (float(upd_start), float(upd_end))
        self.warm = max(0, int(upd_warmup_steps))

    def __call__(self, step: int) -> float:
        if step < self.fix_steps:
            return cosine(step, self.fix_steps, *self.fix)
        s = step - self.fix_steps
        if s < self.warm:
            return float(self.fix[1] + (self.upd[0] - self.fix[1]) * (s + 1) / self.warm)
        return cosine(s - self.warm, self.total_steps - self.fix_steps - self.warm, *self.upd)


def set_lr(optimizer, lr: float, weight_decay: float = None) -> None:
    """Sets the learning rate of every group (and the weight decay of groups that have one)."""
    for g in optimizer.param_groups:
        g["lr"] = lr
        if weight_decay is not None and g.get("weight_decay", 0.0) != 0.0:
            g["weight_decay"] = weight_decay
