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


class RandomEQ(torch.nn.Module):
    """Random channel colouring: a smooth random gain curve applied in the frequency domain, per sample.

    Recording channels (microphone, codec, room) colour the spectrum of a whole session; two crops of one
    utterance share it, so a self-supervised model can match them by their channel instead of their
    speaker. This augmentation draws, per sample, gains uniform in ``±max_gain_db`` at ``n_points``
    log-spaced frequencies (interpolated in log-frequency), plus a random high-pass below
    ``highpass_max_hz`` and low-pass above ``lowpass_min_hz``; the output keeps the input's RMS.
    """

    def __init__(
        self,
        max_gain_db: float = 8.0,
        n_points: int = 6,
        sample_rate: int = 16000,
        highpass_max_hz: float = 300.0,
        lowpass_min_hz: float = 3500.0,
    ) -> None:
        super().__init__()
        self.max_gain_db = float(max_gain_db)
        self.n_points = int(n_points)
        self.sample_rate = int(sample_rate)
        self.highpass_max_hz = float(highpass_max_hz)
        self.lowpass_min_hz = float(lowpass_min_hz)

    def forward(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T = wavs.shape
        dev = wavs.device
        x = wavs.float()
        spec = torch.fft.rfft(x, dim=-1)
        freqs = torch.fft.rfftfreq(T, d=1.0 / self.sample_rate).to(dev)
        nyq = self.sample_rate / 2
        logf = torch.log(freqs.clamp(min=50.0))
        knots = torch.linspace(float(torch.log(torch.tensor(50.0))), float(torch.log(torch.tensor(nyq))), self.n_points, device=dev)
        gains_db = (torch.rand(B, self.n_points, device=dev) * 2 - 1) * self.max_gain_db
        # linear interpolation of the knot gains in log-frequency
        pos = ((logf - knots[0]) / (knots[-1] - knots[0]) * (self.n_points - 1)).clamp(0, self.n_points - 1)
        lo = pos.floor().long().clamp(max=self.n_points - 2)
        frac = pos - lo.float()
        curve_db = gains_db[:, lo] * (1 - frac) + gains_db[:, lo + 1] * frac
        hp = torch.rand(B, 1, device=dev) * self.highpass_max_hz
        lp = self.lowpass_min_hz + torch.rand(B, 1, device=dev) * (nyq - self.lowpass_min_hz)
        f = freqs.unsqueeze(0)
        shape = 1.0 / (1.0 + (hp / f.clamp(min=1.0)) ** 4) / (1.0 + (f / lp) ** 8)  # 2nd/4th-order-like skirts
        gain = (10.0 ** (curve_db / 20.0)) * shape
        y = torch.fft.irfft(spec * gain, n=T, dim=-1)
        rms_in = x.pow(2).mean(-1, keepdim=True).sqrt()
        rms_out = y.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=1e-8)
        return (y * rms_in / rms_out).to(wavs.dtype)


class AugmentChain(torch.nn.Module):
    """Applies several augmenters in turn (e.g. a channel ``RandomAugment`` then a noise/reverb one)."""

    def __init__(self, augmentations: Sequence[torch.nn.Module] = ()) -> None:
        super().__init__()
        self.augmentations = torch.nn.ModuleList(list(augmentations))

    def forward(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        for aug in self.augmentations:
            wavs = aug(wavs, lengths)
        return wavs
