"""Re-estimation of BatchNorm statistics on clean audio.

A student trained on augmented crops (and a teacher that takes its BN buffers by EMA) carries running
statistics of *noisy* input; embedding clean test audio in eval mode with them costs several EER
points at small scale (short runs). ``recalibrate_bn`` resets the running statistics and
re-estimates them as a cumulative average over clean crops of training audio; the model's train/eval
mode is restored afterwards.

The pass itself is PyTorch's ``torch.optim.swa_utils.update_bn`` (reset, ``momentum=None``: a cumulative
average, train mode, momenta and mode restored), which does exactly what our own loop did
(``tests/unit/test_bn_recalibration.py`` pins the buffers bit for bit against it). Around it we keep what
``update_bn`` does not: a ``forward`` callable (the features are computed outside the encoder), no change
at all when there is no batch (``update_bn`` would reset the statistics and leave them empty), the
momenta and mode restored also when a batch fails, and the number of batches used.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch.optim.swa_utils import update_bn


def batchnorm_layers(model: torch.nn.Module):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


class _Forward(torch.nn.Module):
    """``model`` as a submodule (so ``update_bn`` finds its BN layers and sets its mode) run through ``forward``."""

    def __init__(self, model: torch.nn.Module, forward: Callable[[torch.Tensor], object]) -> None:
        super().__init__()
        self.model = model
        self._run = forward
        self.training = model.training  # update_bn restores the wrapper's mode (recursively) at the end

    def forward(self, x: torch.Tensor):
        return self._run(x)


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, forward: Callable[[torch.Tensor], object], batches: Iterable[torch.Tensor]) -> int:
    """Re-estimates the BN running statistics of ``model`` in place.

    Args:
        model: the network whose BN layers are reset (e.g. the ECAPA teacher).
        forward: runs a (B, T) waveform batch through the model (features included).
        batches: clean waveform batches.
    Returns:
        the number of batches used (0 leaves the model untouched).
    """
    bns = batchnorm_layers(model)
    it = iter(batches)
    first = next(it, None)
    if not bns or first is None:
        return 0
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    n = 0

    def counted():
        nonlocal n
        x = first
        while x is not None:
            n += 1
            yield x
            x = next(it, None)

    try:
        update_bn(counted(), _Forward(model, forward))
    except BaseException:
        for bn, m in zip(bns, momenta):  # update_bn restores them only when every batch ran
            bn.momentum = m
        model.train(was_training)
        raise
    return n
