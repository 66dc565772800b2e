"""Re-estimation of BatchNorm statistics on clean audio.

A student trained on augmented crops (and a teacher that takes its BN buffers by EMA) carries running
statistics of *noisy* input; embedding clean test audio in eval mode with them costs several EER
points at small scale (short runs). ``recalibrate_bn`` resets the running statistics and
re-estimates them as a cumulative average over clean crops of training audio; the model's train/eval
mode is restored afterwards.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch


def batchnorm_layers(model: torch.nn.Module):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


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
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    try:
        x = first
        while x is not None:
            forward(x)
            n += 1
            x = next(it, None)
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    return n
