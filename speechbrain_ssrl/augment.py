"""Per-sample random augmentation for training views.

SpeechBrain's ``Augmenter`` decides with ``augment_prob`` for a whole batch at once. Views in DINO and
SSRL must be augmented independently per sample: ``RandomAugment`` gives each sample, with probability
``prob``, one augmentation drawn uniformly from the list (e.g. ``AddNoise`` reading the MUSAN / MiniVox
noise CSV, ``AddNoise`` reading babble, ``AddReverb`` reading the RIR CSV), applied to the sub-batch
of samples that drew it; the others pass through clean.
"""

from __future__ import annotations

import inspect
from typing import Optional, Sequence

import torch


class RandomAugment(torch.nn.Module):
    """Applies one random augmentation per sample with probability ``prob``.

    Args:
        augmentations: modules with ``forward(wavs)`` or ``forward(wavs, lengths)`` on (B, T) audio.
        prob: probability that a sample is augmented at all.
        generator_seed: optional seed for the choice (the augmentations keep their own randomness).
    """

    def __init__(self, augmentations: Sequence[torch.nn.Module] = (), prob: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomAugment: prob must be in [0, 1], got {prob}")
        self.augmentations = torch.nn.ModuleList(list(augmentations))
        self.prob = float(prob)
        self._takes_lengths = [len(inspect.signature(a.forward).parameters) >= 2 for a in self.augmentations]

    def forward(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not len(self.augmentations) or self.prob == 0.0:
            return wavs
        B = wavs.shape[0]
        if lengths is None:
            lengths = torch.ones(B, device=wavs.device)
        on = torch.rand(B) < self.prob
        which = torch.randint(len(self.augmentations), (B,))
        out = wavs.clone()
        for k, aug in enumerate(self.augmentations):
            sel = torch.nonzero(on & (which == k)).flatten()
            if sel.numel() == 0:
                continue
            sel_d = sel.to(wavs.device)
            x = wavs.index_select(0, sel_d)
            y = aug(x, lengths.index_select(0, sel_d)) if self._takes_lengths[k] else aug(x)
            y = y[..., : x.shape[-1]] if y.shape[-1] >= x.shape[-1] else torch.nn.functional.pad(y, (0, x.shape[-1] - y.shape[-1]))
            out[sel_d] = y.to(out.dtype)
        return out
