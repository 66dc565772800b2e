"""Per-sample random augmentation for training views.

SpeechBrain's ``Augmenter`` decides with ``augment_prob`` for a whole batch at once. Views in DINO and
SSRL must be augmented independently per sample: ``RandomAugment`` gives each sample, with probability
``prob``, one augmentation drawn uniformly from the list (e.g. ``AddNoise`` reading the MUSAN / MiniVox
noise CSV, ``AddNoise`` reading babble, ``AddReverb`` reading the RIR CSV), applied to the sub-batch
of samples that drew it; the others pass through clean.

``NoiseBank`` and ``RIRBank`` are in-memory, batched replacements for SpeechBrain's ``AddNoise`` /
``AddReverb`` (same CSV): the files are read once, on the first call, into one tensor on the input's
device, and every call is a few vectorised tensor ops (no disk, no DataLoader), with all randomness drawn
from torch's global CPU generator (so a checkpointed RNG state resumes augmentation exactly).
"""

from __future__ import annotations

import csv
import inspect
import os
from typing import List, Optional, Sequence, Tuple

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


# ------------------------------------------------------------------------------ in-memory noise / RIR banks
def _read_augment_csv(csv_file: str, what: str) -> List[str]:
    """The ``wav`` column of a SpeechBrain augmentation CSV (``ID,duration,wav,wav_format,wav_opts``)."""
    if csv_file is None or not os.path.isfile(os.fspath(csv_file)):
        raise FileNotFoundError(
            f"{what}: augmentation CSV {csv_file!r} does not exist; write it with "
            "speechbrain_ssrl.data.augment_data.make_augment_csv(<folder of wavs>, csv_file)"
        )
    with open(csv_file, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "wav" not in reader.fieldnames:
            raise ValueError(f"{what}: {csv_file} has no 'wav' column (expected ID,duration,wav,wav_format,wav_opts)")
        paths = [row["wav"].strip() for row in reader if (row.get("wav") or "").strip()]
    if not paths:
        raise ValueError(f"{what}: augmentation CSV {csv_file} lists no file")
    return paths


def _read_mono(path: str, sample_rate: int, what: str, max_samples: Optional[int] = None) -> torch.Tensor:
    """Channel 0 of ``path`` as float32 (at most ``max_samples``); the file must be at ``sample_rate``."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as err:  # noqa: BLE001 - libsndfile raises several types
        raise RuntimeError(f"{what}: cannot read {path}: {err}") from err
    if int(info.samplerate) != int(sample_rate):
        raise ValueError(
            f"{what}: {path} is sampled at {info.samplerate} Hz, expected {sample_rate} Hz; resample the "
            "noise/RIR files (or put SpeechBrain's AddNoise/AddReverb back, which resample on the fly)"
        )
    frames = -1 if max_samples is None else int(max_samples)
    data, _ = sf.read(path, frames=frames, dtype="float32", always_2d=True)
    return torch.from_numpy(data[:, 0].copy())


def _valid_mask(lengths: Optional[torch.Tensor], B: int, T: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mask (B, T) bool of the valid samples, n_valid (B, 1) float) from relative ``lengths``."""
    if lengths is None:
        return torch.ones(B, T, dtype=torch.bool, device=device), torch.full((B, 1), float(T), device=device)
    n = (lengths.to(device=device, dtype=torch.float32).reshape(B, 1) * T).clamp(min=1.0, max=float(T))
    mask = torch.arange(T, device=device).unsqueeze(0) < n.round()
    return mask, n


class NoiseBank(torch.nn.Module):
    """Additive noise from an in-memory bank, mixed like SpeechBrain's ``AddNoise``.

    All files of the augmentation CSV are read on the first call and concatenated into one tensor on the
    input's device (a plain attribute: not in ``state_dict``, not broadcast by DDP). Each sample gets a
    random segment of the bank (random offset, wrapping around the end; a segment may span two files) and
    an SNR uniform in ``[snr_low, snr_high]`` dB. The mixture is ``(1 - a) x + a rms(x) n / rms(n)`` with
    ``a = 1 / (10^(SNR/20) + 1)``, RMS over the valid part given by relative ``lengths`` (as ``AddNoise``);
    the padding region is returned untouched.

    Args:
        csv_file: ``ID,duration,wav,wav_format,wav_opts`` CSV (``make_augment_csv``).
        snr_low, snr_high: SNR range in dB.
        sample_rate: every file must be at this rate (no resampling).
        max_seconds: keep at most this many seconds of each file (bounds the bank's memory).
        normalize: divide by the peak when it exceeds 1 (as ``AddNoise(normalize=True)``).
        storage_dtype: dtype the bank is kept in (``torch.float16`` halves its memory).
    """

    def __init__(
        self,
        csv_file: str,
        snr_low: float = 0.0,
        snr_high: float = 20.0,
        sample_rate: int = 16000,
        max_seconds: Optional[float] = None,
        normalize: bool = False,
        storage_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if snr_high < snr_low:
            raise ValueError(f"NoiseBank: snr_high ({snr_high}) < snr_low ({snr_low})")
        self.csv_file = csv_file
        self.snr_low = float(snr_low)
        self.snr_high = float(snr_high)
        self.sample_rate = int(sample_rate)
        self.max_seconds = max_seconds
        self.normalize = bool(normalize)
        self.storage_dtype = storage_dtype
        self.bank: Optional[torch.Tensor] = None
        self._ext: Optional[torch.Tensor] = None
        self.n_files = 0

    def load(self, device=None) -> "NoiseBank":
        """Reads the CSV's files into the bank (done automatically by the first ``forward``)."""
        if self.bank is None:
            max_n = None if self.max_seconds is None else max(1, int(self.max_seconds * self.sample_rate))
            parts = [_read_mono(p, self.sample_rate, "NoiseBank", max_n) for p in _read_augment_csv(self.csv_file, "NoiseBank")]
            parts = [p for p in parts if p.numel()]
            if not parts:
                raise ValueError(f"NoiseBank: every file listed in {self.csv_file} is empty")
            self.bank = torch.cat(parts).to(self.storage_dtype)
            self.n_files = len(parts)
        if device is not None and self.bank.device != torch.device(device):
            self.bank = self.bank.to(device)
            self._ext = None
        return self

    def _wrapped(self, T: int) -> torch.Tensor:
        """The bank followed by its first ``T - 1`` samples (repeated if the bank is shorter), cached."""
        N = self.bank.numel()
        ext = self._ext
        if ext is None or ext.device != self.bank.device or ext.numel() < N + T - 1:
            bank = self.bank
            tail = bank[: T - 1] if N >= T - 1 else bank.repeat(-(-(T - 1) // N))[: T - 1]
            ext = torch.cat([bank, tail])
            self._ext, self.bank = ext, ext[:N]  # one copy in memory
        return ext

    def extra_repr(self) -> str:
        n = "not loaded" if self.bank is None else f"{self.n_files} files, {self.bank.numel() / self.sample_rate:.1f} s"
        return f"csv_file={self.csv_file!r}, snr=[{self.snr_low}, {self.snr_high}] dB, {n}"

    def forward(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        if wavs.dim() != 2:
            raise ValueError(f"NoiseBank expects (B, T) audio, got shape {tuple(wavs.shape)}")
        B, T = wavs.shape
        dev = wavs.device
        self.load(dev)
        N = self.bank.numel()
        # randomness: torch's global CPU generator only (device independent, covered by RNG checkpoints)
        offset = torch.randint(N, (B,)).to(dev)
        snr = (torch.rand(B, 1) * (self.snr_high - self.snr_low) + self.snr_low).to(dev)
        # segments [offset, offset + T) of the bank extended by its own start (wrapping): rows of a strided view
        noise = self._wrapped(T).unfold(0, T, 1).index_select(0, offset).float()
        x = wavs.float()
        mask, n_valid = _valid_mask(lengths, B, T, dev)
        noise = noise * mask
        clean_rms = ((x * mask).pow(2).sum(1, keepdim=True) / n_valid).sqrt()
        noise_rms = (noise.pow(2).sum(1, keepdim=True) / n_valid).sqrt()
        a = 1.0 / (10.0 ** (snr / 20.0) + 1.0)
        y = x * (1.0 - a) + noise * (a * clean_rms / (noise_rms + 1e-14))
        if self.normalize:
            y = y / y.abs().amax(1, keepdim=True).clamp(min=1.0)
        return torch.where(mask, y, x).to(wavs.dtype)


class RIRBank(torch.nn.Module):
    """Reverberation with an in-memory bank of room impulse responses, one random RIR per sample.

    The RIRs of the CSV are read on the first call, each cut to ``max_rir_seconds`` and scaled to unit
    energy, into one (n_rir, L) tensor on the input's device. A sample is convolved with its RIR (linear
    convolution by FFT of size ``2^k >= T + L - 1``), aligned on the RIR's direct path (its peak, as
    SpeechBrain's ``reverberate``) and rescaled to the input's average absolute amplitude (``rescale_amp=
    "avg"``), over the valid part given by relative ``lengths``; the padding region is returned untouched.
    Unlike ``reverberate`` (a circular convolution of length T), the reverberation tail does not wrap
    around onto the start of the crop, and each sample gets its own RIR (``AddReverb`` uses one per call).

    Args:
        csv_file: ``ID,duration,wav,wav_format,wav_opts`` CSV (``make_augment_csv``).
        sample_rate: every file must be at this rate (no resampling).
        max_rir_seconds: each RIR is cut to this length.
        spectrum_cache_mb: the spectra of all RIRs are cached (per FFT size) up to this size.
    """

    def __init__(self, csv_file: str, sample_rate: int = 16000, max_rir_seconds: float = 1.0, spectrum_cache_mb: float = 512.0) -> None:
        super().__init__()
        self.csv_file = csv_file
        self.sample_rate = int(sample_rate)
        self.max_rir_seconds = float(max_rir_seconds)
        self.spectrum_cache_mb = float(spectrum_cache_mb)
        self._cache: Optional[torch.Tensor] = None
        self._cache_key: Optional[tuple] = None
        self.rirs: Optional[torch.Tensor] = None  # (n_rir, L), unit energy
        self.peaks: Optional[torch.Tensor] = None  # (n_rir,) index of the direct path

    def load(self, device=None) -> "RIRBank":
        """Reads the CSV's RIRs into the bank (done automatically by the first ``forward``)."""
        if self.rirs is None:
            max_n = max(1, int(round(self.max_rir_seconds * self.sample_rate)))
            rirs = []
            for p in _read_augment_csv(self.csv_file, "RIRBank"):
                h = _read_mono(p, self.sample_rate, "RIRBank", max_n)
                energy = h.double().pow(2).sum().sqrt()
                if h.numel() and energy > 0:
                    rirs.append((h.double() / energy).float())
            if not rirs:
                raise ValueError(f"RIRBank: every RIR listed in {self.csv_file} is empty or silent")
            L = max(h.numel() for h in rirs)
            bank = torch.zeros(len(rirs), L)
            for i, h in enumerate(rirs):
                bank[i, : h.numel()] = h
            self.rirs = bank
            self.peaks = bank.abs().argmax(1)
        if device is not None and self.rirs.device != torch.device(device):
            self.rirs, self.peaks = self.rirs.to(device), self.peaks.to(device)
        return self

    def _spectra(self, n_fft: int, which: torch.Tensor) -> torch.Tensor:
        """rfft (size ``n_fft``) of the chosen RIRs rotated left by their peak index (direct path at t=0).

        With ``n_fft >= T + L - 1`` the circular convolution with the rotated RIR equals the linear
        convolution shifted by the peak. The spectra of the whole bank are cached per ``n_fft`` when they
        take at most ``spectrum_cache_mb``; otherwise only the chosen RIRs are transformed.
        """
        n_rir, L = self.rirs.shape
        key = (n_fft, str(self.rirs.device))
        if self._cache_key == key:
            return self._cache.index_select(0, which)
        cache_all = n_rir * (n_fft // 2 + 1) * 8 <= self.spectrum_cache_mb * 2**20
        rows = torch.arange(n_rir, device=which.device) if cache_all else which
        h = torch.nn.functional.pad(self.rirs.index_select(0, rows), (0, n_fft - L))
        idx = torch.remainder(torch.arange(n_fft, device=h.device).unsqueeze(0) + self.peaks.index_select(0, rows).unsqueeze(1), n_fft)
        spec = torch.fft.rfft(h.gather(1, idx), n=n_fft)
        if not cache_all:
            return spec
        self._cache, self._cache_key = spec, key
        return spec.index_select(0, which)

    def extra_repr(self) -> str:
        n = "not loaded" if self.rirs is None else f"{self.rirs.shape[0]} RIRs of {self.rirs.shape[1]} samples"
        return f"csv_file={self.csv_file!r}, {n}"

    def forward(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        if wavs.dim() != 2:
            raise ValueError(f"RIRBank expects (B, T) audio, got shape {tuple(wavs.shape)}")
        B, T = wavs.shape
        dev = wavs.device
        self.load(dev)
        n_rir, L = self.rirs.shape
        which = torch.randint(n_rir, (B,)).to(dev)  # torch's global CPU generator only
        x = wavs.float()
        mask, n_valid = _valid_mask(lengths, B, T, dev)
        x_valid = x * mask
        n_fft = 1 << (T + L - 2).bit_length()  # next power of two >= T + L - 1: no circular wrap
        y = torch.fft.irfft(torch.fft.rfft(x_valid, n=n_fft) * self._spectra(n_fft, which), n=n_fft)[:, :T]
        y = y * mask
        amp_in = x_valid.abs().sum(1, keepdim=True) / n_valid
        amp_out = y.abs().sum(1, keepdim=True) / n_valid
        y = y * (amp_in / (amp_out + 1e-14))
        return torch.where(mask, y, x).to(wavs.dtype)
