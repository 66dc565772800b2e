"""NoiseBank / RIRBank: in-memory replacements for SpeechBrain's AddNoise / AddReverb."""

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_ssrl.augment import NoiseBank, RandomAugment, RIRBank
from speechbrain_ssrl.data.augment_data import make_augment_csv

torch.set_num_threads(1)
SR = 16000


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    root = tmp_path_factory.mktemp("augbanks")
    rng = np.random.default_rng(0)
    os.makedirs(root / "noise")
    os.makedirs(root / "rir")
    for i, n in enumerate([3000, 5000, 7000]):
        sf.write(root / "noise" / f"n{i}.wav", (0.1 * rng.standard_normal(n)).astype("float32"), SR, subtype="FLOAT")
    for i, n in enumerate([800, 1500]):
        t = np.arange(n)
        h = rng.standard_normal(n) * np.exp(-t / 200.0) * 0.2
        h[:40] = 0.0
        h[40] = 1.0  # direct path (peak) at 40
        sf.write(root / "rir" / f"r{i}.wav", h.astype("float32"), SR, subtype="FLOAT")
    return make_augment_csv(root / "noise", root / "noise.csv"), make_augment_csv(root / "rir", root / "rir.csv")


def _speech(B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T) / SR
    f0 = 100 + 200 * torch.rand(B, 1, generator=g)
    return torch.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * torch.rand(B, 1, generator=g)) + 0.01 * torch.randn(B, T, generator=g)


def test_noise_shapes_state_dict_and_fixed_snr(banks):
    aug = NoiseBank(banks[0], snr_low=5, snr_high=5)
    x = _speech(6, 4000)
    y = aug(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert aug.bank.numel() == 15000 and len(aug.state_dict()) == 0
    a = 1 / (10 ** (5 / 20) + 1)
    noise = y - (1 - a) * x
    snr = 10 * torch.log10(((1 - a) * x).pow(2).mean(1) / noise.pow(2).mean(1))
    assert torch.allclose(snr, torch.full_like(snr, 5.0), atol=0.05)


def test_noise_snr_range(banks):
    torch.manual_seed(0)
    aug = NoiseBank(banks[0], snr_low=0, snr_high=20)
    x = _speech(64, 8000)
    y = aug(x)
    # clean gain by least squares (the noise is nearly orthogonal to the tones), then the SNR of the parts
    g = (y * x).sum(1, keepdim=True) / x.pow(2).sum(1, keepdim=True)
    snr = 10 * torch.log10((g * x).pow(2).sum(1) / (y - g * x).pow(2).sum(1))
    assert snr.min() > -0.5 and snr.max() < 20.5 and snr.std() > 3


def test_noise_lengths_respected(banks):
    aug = NoiseBank(banks[0], snr_low=10, snr_high=10)
    x = _speech(3, 4000)
    x[1, 2000:] = 0.0
    lens = torch.tensor([1.0, 0.5, 1.0])
    y = aug(x, lens)
    assert torch.equal(y[1, 2000:], x[1, 2000:])  # padding untouched
    a = 1 / (10 ** 0.5 + 1)
    n = y[1, :2000] - (1 - a) * x[1, :2000]
    snr = 10 * torch.log10(((1 - a) * x[1, :2000]).pow(2).mean() / n.pow(2).mean())
    assert abs(float(snr) - 10.0) < 0.05  # RMS on the valid part


def test_noise_wraps_when_bank_shorter_than_crop(banks):
    aug = NoiseBank(banks[0], max_seconds=0.05)  # 3 x 800 samples
    y = aug(_speech(2, 5000))
    assert aug.bank.numel() == 2400 and torch.isfinite(y).all()
    ext = aug._wrapped(5000)
    assert torch.equal(ext, aug.bank[torch.arange(2400 + 4999) % 2400])


def _reference_reverb(x, h):
    """np.convolve, aligned on the RIR's peak, rescaled to the input's mean |x|."""
    p = int(np.argmax(np.abs(h)))
    y = np.convolve(x, h)[p : p + len(x)]
    return y * np.abs(x).mean() / np.abs(y).mean()


@pytest.mark.parametrize("cache_mb", [512.0, 0.0])
def test_rir_matches_np_convolve(banks, cache_mb):
    aug = RIRBank(banks[1], max_rir_seconds=1.0, spectrum_cache_mb=cache_mb)
    x = _speech(5, 3000)
    torch.manual_seed(3)
    y = aug(x)
    assert y.shape == x.shape and len(aug.state_dict()) == 0
    torch.manual_seed(3)
    which = torch.randint(aug.rirs.shape[0], (5,))
    assert (aug.peaks == 40).all()
    for b in range(5):
        ref = _reference_reverb(x[b].double().numpy(), aug.rirs[which[b]].double().numpy())
        np.testing.assert_allclose(y[b].numpy(), ref, atol=2e-4 * np.abs(ref).max())


def test_rir_lengths_and_trim(banks):
    aug = RIRBank(banks[1], max_rir_seconds=0.05)  # 800 samples
    x = _speech(2, 3000)
    lens = torch.tensor([1.0, 0.5])
    y = aug(x, lens)
    assert aug.rirs.shape == (2, 800)
    assert torch.equal(y[1, 1500:], x[1, 1500:])
    ref_in = x[1, :1500].abs().mean()
    assert abs(float(y[1, :1500].abs().mean() / ref_in) - 1) < 1e-4


def test_deterministic_and_in_random_augment(banks):
    chain = RandomAugment([NoiseBank(banks[0]), RIRBank(banks[1])], prob=0.8)
    x = _speech(8, 3000)
    torch.manual_seed(7)
    y1 = chain(x, torch.ones(8))
    torch.manual_seed(7)
    y2 = chain(x, torch.ones(8))
    torch.manual_seed(8)
    y3 = chain(x, torch.ones(8))
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)


def test_missing_and_empty_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_augment_csv"):
        NoiseBank(str(tmp_path / "nope.csv"))(torch.zeros(1, 100))
    empty = tmp_path / "empty.csv"
    empty.write_text("ID,duration,wav,wav_format,wav_opts\n")
    with pytest.raises(ValueError, match="lists no file"):
        RIRBank(str(empty))(torch.zeros(1, 100))


def test_wrong_sample_rate(tmp_path):
    os.makedirs(tmp_path / "n8k")
    sf.write(tmp_path / "n8k" / "a.wav", np.zeros(800, dtype="float32") + 0.1, 8000)
    csv_file = make_augment_csv(tmp_path / "n8k", tmp_path / "n8k.csv")
    with pytest.raises(ValueError, match=r"a\.wav.*8000 Hz"):
        NoiseBank(csv_file)(torch.zeros(1, 100))
    with pytest.raises(ValueError, match=r"a\.wav.*8000 Hz"):
        RIRBank(csv_file)(torch.zeros(1, 100))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu(banks):
    x = _speech(4, 3000)
    for aug in (NoiseBank(banks[0]), RIRBank(banks[1])):
        torch.manual_seed(1)
        yc = aug(x)
        torch.manual_seed(1)
        yg = aug(x.cuda()).cpu()
        torch.testing.assert_close(yg, yc, atol=1e-4, rtol=1e-4)
