"""Exponential-moving-average (EMA) teacher: momentum schedule, update, and teacher creation.

After every optimiser step the teacher follows the student,

    teacher ← m · teacher + (1 - m) · student          (parameters, and float buffers by default)

with ``m`` rising linearly per step (0.999 → 0.9999 over the run in the release; short
runs need a schedule sized to their length, e.g. 0.98 → 0.995). The teacher is kept out
of the Brain's ``modules`` (no optimiser, no DDP wrapper) and is checkpointed as a plain module.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
from speechbrain_ssrl.state import StateRecoverable
from torch import nn

__all__ = ["LinearMomentum", "ema_update_", "make_teacher", "unwrap"]

_BUFFER_MODES = ("ema", "copy", "none")


_WRAPPERS = (nn.parallel.DistributedDataParallel, nn.DataParallel)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers (else itself)."""
    while isinstance(module, _WRAPPERS):
        module = module.module
    return module


def _named_tensors(module: nn.Module, kind: str) -> Dict[str, torch.Tensor]:
    """Parameters or buffers by name, with the ``module.`` segments of DDP / DataParallel wrappers
    removed, so a ``ModuleDict`` holding a wrapped student matches an unwrapped teacher."""
    module = unwrap(module)
    wrappers = sorted((n for n, m in module.named_modules() if isinstance(m, _WRAPPERS)), key=len, reverse=True)
    items = module.named_parameters() if kind == "parameters" else module.named_buffers()
    out: Dict[str, torch.Tensor] = {}
    for name, t in items:
        for w in wrappers:
            head = w + "."
            if name.startswith(head + "module."):
                name = head + name[len(head + "module.") :]
        out[name] = t
    return out


class LinearMomentum(StateRecoverable):
    """EMA momentum rising linearly from ``start`` to ``end`` over ``total_steps`` steps.

    ``m(step) = start + (end - start) * clamp(step, 0, total_steps) / total_steps``: ``start`` at
    step 0, ``end`` from step ``total_steps`` on. ``__call__(step)`` is the pure schedule;
    ``advance()`` returns ``m`` at the internal step counter and increments it (call it once per
    optimiser step). ``total_steps`` may be set after construction (e.g. epochs × batches, once the
    dataloader is known). The state (counter and schedule) is checkpointed.
    """

    def __init__(self, start: float = 0.999, end: float = 0.9999, total_steps: Optional[int] = None) -> None:
        for name, v in (("start", start), ("end", end)):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} momentum must be in [0, 1], got {v}")
        self.start: float = float(start)
        self.end: float = float(end)
        self.total_steps: Optional[int] = None if total_steps is None else int(total_steps)
        self.step: int = 0

    def __call__(self, step: Optional[int] = None) -> float:
        """Momentum at ``step`` (default: the internal counter)."""
        if self.total_steps is None or self.total_steps < 1:
            raise ValueError(f"LinearMomentum.total_steps must be set to an integer >= 1, got {self.total_steps}")
        step = self.step if step is None else int(step)
        frac = min(max(step, 0), self.total_steps) / self.total_steps
        return self.start + (self.end - self.start) * frac

    def advance(self) -> float:
        """Momentum for the current step, then move the counter to the next step."""
        m = self(self.step)
        self.step += 1
        return m

    def state_dict(self) -> Dict[str, Any]:
        return {"start": self.start, "end": self.end, "total_steps": self.total_steps, "step": self.step}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.start = float(state["start"])
        self.end = float(state["end"])
        self.total_steps = None if state["total_steps"] is None else int(state["total_steps"])
        self.step = int(state["step"])


    def __repr__(self) -> str:
        return f"LinearMomentum(start={self.start}, end={self.end}, total_steps={self.total_steps}, step={self.step})"


def _check_same(kind: str, teacher: Dict[str, torch.Tensor], student: Dict[str, torch.Tensor]) -> None:
    missing = sorted(set(student) - set(teacher))
    extra = sorted(set(teacher) - set(student))
    shapes = [
        f"{k}: teacher {tuple(teacher[k].shape)} vs student {tuple(student[k].shape)}"
        for k in teacher
        if k in student and teacher[k].shape != student[k].shape
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing in the teacher: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"missing in the student: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes[:5]))
        raise ValueError(f"EMA teacher and student {kind} differ: " + " | ".join(parts))


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float, buffers: str = "ema") -> None:
    """In place: ``teacher = momentum * teacher + (1 - momentum) * student``.

    Parameters are always averaged (including frozen ones). ``buffers``: ``"ema"`` averages the
    floating-point buffers (BatchNorm ``running_mean`` / ``running_var``) the same way, ``"copy"``
    copies them from the student, ``"none"`` leaves every teacher buffer alone. With ``"ema"`` and
    ``"copy"``, non-float buffers (``num_batches_tracked``, bool masks) are copied. ``student`` and
    ``teacher`` may be DDP / DataParallel wrapped, or contain wrapped submodules (e.g. a ``ModuleDict``
    of Brain modules); their parameter (and, unless ``"none"``, buffer)
    names and shapes must match, else ``ValueError``.
    """
    if buffers not in _BUFFER_MODES:
        raise ValueError(f"buffers must be one of {_BUFFER_MODES}, got {buffers!r}")
    m = float(momentum)
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t_params, s_params = _named_tensors(teacher, "parameters"), _named_tensors(student, "parameters")
    _check_same("parameters", t_params, s_params)
    for name, t in t_params.items():
        t.lerp_(s_params[name].detach().to(t.device, t.dtype), 1.0 - m)  # t + (1-m) (s - t)
    if buffers == "none":
        return
    t_bufs, s_bufs = _named_tensors(teacher, "buffers"), _named_tensors(student, "buffers")
    _check_same("buffers", t_bufs, s_bufs)
    for name, t in t_bufs.items():
        s = s_bufs[name].detach()
        if buffers == "ema" and t.is_floating_point():
            t.lerp_(s.to(t.device, t.dtype), 1.0 - m)
        else:
            t.copy_(s)


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of the (unwrapped) student in eval mode with ``requires_grad=False`` everywhere.

    Non-leaf tensors cached as plain module attributes (legacy ``torch.nn.utils.weight_norm``
    keeps the last computed ``weight`` there, which ``deepcopy`` refuses) are copied detached;
    the student itself is left as it was.
    """
    student = unwrap(student)
    cached = [
        (mod, name, value)
        for mod in student.modules()
        for name, value in vars(mod).items()
        if isinstance(value, torch.Tensor) and value.grad_fn is not None
    ]
    try:
        for mod, name, value in cached:
            setattr(mod, name, value.detach())
        teacher = copy.deepcopy(student)
    finally:
        for mod, name, value in cached:
            setattr(mod, name, value)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher
