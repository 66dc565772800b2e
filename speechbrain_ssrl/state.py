"""A checkpoint mixin for the method's plain-Python state objects (queues, GMM, schedules, labels).

Classes that implement ``state_dict()`` / ``load_state_dict()`` with tensors and plain Python values
inherit ``StateRecoverable`` to become SpeechBrain checkpointer recoverables: the state is written
with ``torch.save`` and read back with ``torch.load(weights_only=True)`` (SpeechBrain's default-safe
loading, which refuses numpy objects). SpeechBrain finds the hooks through the class hierarchy.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks


@register_checkpoint_hooks
class StateRecoverable:
    """Mixin: ``_save`` / ``_load`` checkpoint hooks on top of ``state_dict`` / ``load_state_dict``."""

    def state_dict(self) -> Dict[str, Any]:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def load_state_dict(self, state: Dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError

    @mark_as_saver
    def _save(self, path) -> None:
        torch.save(self.state_dict(), path)

    @mark_as_loader
    def _load(self, path, end_of_epoch) -> None:
        del end_of_epoch  # the same state either way
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
