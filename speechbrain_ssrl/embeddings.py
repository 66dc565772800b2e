"""Batched full-utterance embedding extraction (for clustering, validation and evaluation)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from tqdm import tqdm

from speechbrain.dataio.dataio import read_audio

EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def load_wav(path: str, max_samples: Optional[int] = None) -> torch.Tensor:
    """Reads a mono 16 kHz file (soundfile via SpeechBrain), keeping at most ``max_samples`` from the start."""
    if max_samples is not None:
        wav = read_audio({"file": path, "start": 0, "stop": int(max_samples)})
    else:
        wav = read_audio(path)
    if wav.dim() > 1:
        wav = wav.mean(-1)
    return wav.float()


@torch.no_grad()
def extract_embeddings(
    embed_fn: EmbedFn,
    wav_paths: Sequence[str],
    durations: Optional[Sequence[float]] = None,
    max_seconds: Optional[float] = None,
    batch_seconds: float = 240.0,
    max_batch: int = 64,
    sample_rate: int = 16000,
    device: str = "cpu",
    normalize: bool = True,
    progress: bool = True,
    desc: str = "embeddings",
) -> torch.Tensor:
    """Embeds each file once, in batches of similar length (padding is kept small).

    Args:
        embed_fn: ``embed_fn(wavs (B, T), lens (B,) relative) -> (B, D)``, called under ``no_grad``.
        wav_paths: audio files; the result keeps their order.
        durations: seconds per file (read from the file headers when not given), used to batch by length.
        max_seconds: cap per utterance (the start of the file is kept); ``None`` = full length.
        batch_seconds: total audio seconds per batch (at most ``max_batch`` files).
        normalize: L2-normalise the embeddings.
    Returns:
        (N, D) float32 tensor on the CPU.
    """
    n = len(wav_paths)
    if n == 0:
        raise ValueError("extract_embeddings: no audio files given")
    if durations is None:
        import soundfile as sf

        durations = [sf.info(p).duration for p in wav_paths]
    cap = float("inf") if max_seconds is None else float(max_seconds)
    eff = [min(float(d), cap) for d in durations]
    order = sorted(range(n), key=lambda i: -eff[i])
    batches, cur = [], []
    for i in order:
        # the first (longest) file of the batch sets the padded length
        longest = eff[cur[0]] if cur else eff[i]
        if cur and (len(cur) + 1 > max_batch or (len(cur) + 1) * longest > batch_seconds):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    max_samples = None if max_seconds is None else int(round(max_seconds * sample_rate))
    out: list = [None] * n
    for b in tqdm(batches, desc=desc, disable=not progress, leave=False):
        wavs = [load_wav(wav_paths[i], max_samples) for i in b]
        T = max(w.shape[0] for w in wavs)
        x = torch.zeros(len(wavs), T)
        for j, w in enumerate(wavs):
            x[j, : w.shape[0]] = w
        lens = torch.tensor([w.shape[0] / T for w in wavs])
        emb = embed_fn(x.to(device), lens.to(device)).float().reshape(len(wavs), -1)
        if normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        if not torch.isfinite(emb).all():
            bad = [wav_paths[b[j]] for j in range(len(b)) if not torch.isfinite(emb[j]).all()]
            raise FloatingPointError(f"non-finite embeddings for {bad[:3]} (model weights or audio contain NaN/inf)")
        for j, i in enumerate(b):
            out[i] = emb[j].cpu()
    return torch.stack(out)
