"""Batched full-utterance embedding extraction (for clustering, validation and evaluation).

Audio is read with soundfile (``speechbrain_ssrl.data.views.read_checked``): a file that does not
decode, holds no sample or a non-finite sample raises ``BadAudioError`` naming it, so a wrong or
broken file never becomes a silent score. Test files at another sample rate are resampled and
multi-channel files averaged to mono (``convert_audio=True``, with one warning naming the files), or
refused (``convert_audio=False``).

Files are read by a ``torch.utils.data.DataLoader`` over length-sorted batches (``num_workers`` worker
processes read the next batches while the model embeds this one); with ``distributed=True``
under DDP every rank embeds every ``world``-th batch and the embeddings are all-gathered, so each rank
returns all of them. The batches, their padding and the output order are those of a single process
with no worker: the embeddings are the same (``tests/unit/test_embeddings_loader.py``).

By default only files of equal length share a forward pass (``pad=False``): an evaluation or validation
embedding is that of the file alone, as SpeechBrain's ``EncoderClassifier.encode_batch`` of one file gives.
The initial clustering keeps padded batches of similar length (``pad=True``: many fewer passes over a
training set of 10^6 files of every length; k-means tolerates the small change).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from speechbrain_ssrl.data.views import BadAudioError, read_checked
from speechbrain_ssrl.distributed import all_gather_cat, collective_ok

logger = logging.getLogger(__name__)

EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``read_fn(i, max_seconds) -> (T,)`` float waveform at the model's rate, for file ``i`` of the list
ReadFn = Callable[[int, Optional[float]], torch.Tensor]


def resample(wav: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """``wav`` (T,) from ``rate`` to ``target`` Hz (polyphase filter, scipy)."""
    if int(rate) == int(target):
        return wav
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(target))
    out = resample_poly(wav.double().numpy(), int(target) // g, int(rate) // g)
    return torch.from_numpy(out).float()


def audio_info(path: str):
    """soundfile's header of ``path``; ``BadAudioError`` naming the file when it is not audio."""
    import soundfile as sf

    try:
        return sf.info(path)
    except Exception as e:  # noqa: BLE001 - libsndfile raises RuntimeError / LibsndfileError / OSError
        raise BadAudioError(path, f"not readable as audio ({str(e).strip() or type(e).__name__})") from None


def read_audio_file(
    path: str, max_seconds: Optional[float] = None, sample_rate: int = 16000, convert: bool = True
) -> Tuple[torch.Tensor, List[str]]:
    """(waveform (T,) at ``sample_rate``, mono; notes on what was changed) of an evaluation file.

    At most ``max_seconds`` from the start are read. Another rate is resampled and several channels
    are averaged when ``convert``, else refused. ``BadAudioError`` (naming the file) for a file that
    does not decode, holds no sample (a header only) or a NaN / inf sample.
    """
    info = audio_info(path)
    rate, channels = int(info.samplerate), int(info.channels)
    if (rate != sample_rate or channels != 1) and not convert:
        raise BadAudioError(
            path,
            f"{rate} Hz, {channels} channel(s), not {sample_rate} Hz mono. Fix: convert it (ffmpeg -i <in> -ar "
            f"{sample_rate} -ac 1 <out>.wav) or set convert_audio: True (resample / average the channels)",
        )
    stop = None if max_seconds is None else int(round(float(max_seconds) * rate))
    wav = read_checked(path, 0, stop)
    notes = []
    if channels != 1:
        notes.append(f"{channels} channels averaged to mono")
    if rate != sample_rate:
        wav = resample(wav, rate, sample_rate)
        notes.append(f"resampled from {rate} Hz to {sample_rate} Hz")
    if stop is not None and info.frames > stop:
        notes.append(f"cut to its first {float(max_seconds):g} s of {info.frames / rate:.1f} s")
    return wav, notes


def load_wav(path: str, max_samples: Optional[int] = None, sample_rate: int = 16000) -> torch.Tensor:
    """A ``sample_rate`` mono waveform of ``path`` (converted when needed), at most ``max_samples`` long."""
    max_seconds = None if max_samples is None else max_samples / sample_rate
    return read_audio_file(path, max_seconds, sample_rate, convert=True)[0]


def length_batches(lengths: Sequence[float], budget: float, max_batch: int, pad: bool) -> List[List[int]]:
    """Indices grouped by length, the longest first (ties in input order): a batch holds at most ``max_batch``
    items and ``budget`` of padded length (same unit as ``lengths``; a longer item is alone). ``pad=False``:
    only items of equal length share a batch (no padding: an embedding does not depend on its batch)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: List[List[int]] = []
    cur: List[int] = []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]  # the first (longest) item sets the padded length
        if cur and (len(cur) + 1 > max_batch or (len(cur) + 1) * longest > budget or (not pad and lengths[i] != longest)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def _batches(durations: Sequence[float], max_seconds: Optional[float], batch_seconds: float, max_batch: int,
             pad: bool = True) -> List[List[int]]:
    """``length_batches`` of the durations capped at ``max_seconds``, ``batch_seconds`` padded per batch."""
    cap = float("inf") if max_seconds is None else float(max_seconds)
    return length_batches([min(float(d), cap) for d in durations], batch_seconds, max_batch, pad)


def _equal_length_groups(n_samples: Sequence[int]) -> List[List[int]]:
    """Positions of a batch grouped by equal sample count, the longest first (a batch whose header durations
    were equal but whose decoded lengths differ is split, so no item is padded)."""
    groups: Dict[int, List[int]] = {}
    for j, n in enumerate(n_samples):
        groups.setdefault(int(n), []).append(j)
    return [groups[n] for n in sorted(groups, reverse=True)]


def _warn_changed(notes: Dict[str, List[str]], what: str) -> None:
    if not notes:
        return
    shown = "; ".join(f"{p}: {', '.join(n)}" for p, n in list(notes.items())[:10])
    more = f"; ... and {len(notes) - 10} more" if len(notes) > 10 else ""
    logger.warning("%d %s file(s) were changed before embedding: %s%s", len(notes), what, shown, more)


class _BatchReader(torch.utils.data.Dataset):
    """Item ``b``: the ``b``-th batch of file indices read and zero-padded (in a DataLoader worker).

    ``read(i) -> (wav (T,), notes)``. A ``BadAudioError`` is returned as data (``bad``: [(i, reason)],
    in batch order), not raised, so the main process decides (raise or leave the file out) and a
    worker never has to pickle it; any other exception propagates.
    """

    def __init__(self, batches: Sequence[Sequence[int]], read: Callable[[int], Tuple[torch.Tensor, List[str]]],
                 known_bad: Sequence[int] = ()) -> None:
        self.batches = [list(b) for b in batches]
        self.read = read
        self.known_bad = set(known_bad)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> Dict[str, Any]:
        idx, wavs, bad, notes = [], [], [], {}
        for i in self.batches[b]:
            if i in self.known_bad:
                continue
            try:
                wav, n = self.read(i)
            except BadAudioError as e:
                bad.append((i, e.reason))
                continue
            if n:
                notes[i] = n
            idx.append(i)
            wavs.append(wav)
        if not wavs:
            return dict(idx=idx, x=None, lens=None, bad=bad, notes=notes)
        T = max(w.shape[0] for w in wavs)
        x = torch.zeros(len(wavs), T)
        for j, w in enumerate(wavs):
            x[j, : w.shape[0]] = w
        lens = torch.tensor([w.shape[0] / T for w in wavs])
        return dict(idx=idx, x=x, lens=lens, n=[int(w.shape[0]) for w in wavs], bad=bad, notes=notes)


def _as_is(item):
    return item


_FORK = "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def _embed_files(
    embed_fn: EmbedFn,
    wav_paths: Sequence[str],
    durations: Optional[Sequence[float]],
    max_seconds: Optional[float],
    batch_seconds: float,
    max_batch: int,
    sample_rate: int,
    device: str,
    normalize: bool,
    progress: bool,
    desc: str,
    read_fn: Optional[ReadFn],
    convert_audio: bool,
    skip_bad: bool,
    num_workers: int = 0,
    distributed: bool = False,
    pad: bool = False,
) -> Tuple[List[Optional[torch.Tensor]], Dict[str, str]]:
    """Per file: its embedding, or None for a bad file when ``skip_bad``; and {bad path: reason}."""
    n = len(wav_paths)
    if n == 0:
        raise ValueError("extract_embeddings: no audio files given")
    bad: Dict[str, str] = {}
    if durations is None:
        durations = []
        for p in wav_paths:
            try:
                durations.append(audio_info(p).duration)
            except BadAudioError as e:
                if not skip_bad:
                    raise
                bad[p] = e.reason
                durations.append(0.0)

    def read(i: int) -> Tuple[torch.Tensor, List[str]]:
        if read_fn is not None:
            return read_fn(i, max_seconds), []
        return read_audio_file(wav_paths[i], max_seconds, sample_rate, convert_audio)

    batches = _batches(durations, max_seconds, batch_seconds, max_batch, pad)
    shard = collective_ok() and distributed
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if shard else (0, 1)
    mine = batches[rank::world]
    known_bad = [i for i, p in enumerate(wav_paths) if p in bad]
    loader = torch.utils.data.DataLoader(
        _BatchReader(mine, read, known_bad), batch_size=None, shuffle=False, num_workers=int(num_workers),
        collate_fn=_as_is,
        generator=torch.Generator(),  # its seed draw must not move the global RNG (training continues from it)
        # forked workers share the reader (a closure over the CSV rows) without pickling it, also where
        # the default is spawn / forkserver (torch.multiprocessing.spawn children, Python >= 3.14)
        multiprocessing_context=_FORK if int(num_workers) > 0 else None,
    )
    out: List[Optional[torch.Tensor]] = [None] * n
    changed: Dict[str, List[str]] = {}
    done_idx: List[int] = []
    done_emb: List[torch.Tensor] = []
    error: Optional[BaseException] = None
    try:
        for item in tqdm(loader, total=len(mine), desc=desc, disable=not progress, leave=False):
            for i, reason in item["bad"]:
                if not skip_bad:
                    raise BadAudioError(wav_paths[i], reason)
                bad[wav_paths[i]] = reason
            changed.update({wav_paths[i]: v for i, v in item["notes"].items()})
            idx = item["idx"]
            if not idx:
                continue
            if pad:
                emb = embed_fn(item["x"].to(device), item["lens"].to(device)).float().reshape(len(idx), -1)
            else:  # no padded frame reaches the model: each group of equal length is one forward pass
                emb = [None] * len(idx)
                for g in _equal_length_groups(item["n"]):
                    x = item["x"][g, : item["n"][g[0]]]
                    e = embed_fn(x.to(device), torch.ones(len(g), device=device)).float().reshape(len(g), -1)
                    for k, j in enumerate(g):
                        emb[j] = e[k]
                emb = torch.stack(emb)
            if normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            if not torch.isfinite(emb).all():
                worst = [wav_paths[idx[j]] for j in range(len(idx)) if not torch.isfinite(emb[j]).all()]
                raise FloatingPointError(
                    f"non-finite embeddings for {worst[:3]}: their audio is finite, so the model's weights or "
                    "BatchNorm statistics hold NaN/inf"
                )
            emb = emb.cpu()
            for j, i in enumerate(idx):
                out[i] = emb[j]
            done_idx.extend(idx)
            done_emb.append(emb)
    except Exception as e:  # noqa: BLE001 - under DDP the other ranks must learn of it (no hang in a gather)
        if not shard:
            raise
        error = e
    if shard:
        out, bad, changed = _gather(out, done_idx, done_emb, bad, changed, error, world)
    _warn_changed(changed, desc)
    return out, bad


def _gather(out, done_idx, done_emb, bad, changed, error, world):
    """Every rank's embeddings (and bad / converted files) on every rank; a failure on any rank is raised
    on all of them (the failing rank's own exception there, a RuntimeError naming it elsewhere)."""
    dist = torch.distributed
    status: List[Any] = [None] * world
    dist.all_gather_object(status, None if error is None else f"{type(error).__name__}: {error}")
    failed = [(r, m) for r, m in enumerate(status) if m is not None]
    if failed:
        if error is not None:
            raise error
        r, m = failed[0]
        raise RuntimeError(f"embedding extraction failed on rank {r}: {m}")
    d = max(int(e.shape[1]) for e in done_emb) if done_emb else 0
    d = int(all_gather_cat(torch.tensor([d])).max())
    idx = all_gather_cat(torch.tensor(done_idx, dtype=torch.long))
    flat = torch.cat([e.reshape(-1) for e in done_emb]) if done_emb else torch.zeros(0)
    emb = all_gather_cat(flat).reshape(-1, d) if d else torch.zeros(0, 0)
    for k, i in enumerate(idx.tolist()):
        out[i] = emb[k]
    extras: List[Any] = [None] * world
    dist.all_gather_object(extras, (bad, changed))
    bad_all: Dict[str, str] = {}
    changed_all: Dict[str, List[str]] = {}
    for b, c in extras:
        bad_all.update(b)
        changed_all.update(c)
    return out, bad_all, changed_all


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
    read_fn: Optional[ReadFn] = None,
    convert_audio: bool = True,
    num_workers: int = 0,
    distributed: bool = False,
    pad: bool = False,
) -> torch.Tensor:
    """Embeds each file once, in batches of files of equal length (``pad=True``: of similar length, padded).

    Args:
        embed_fn: ``embed_fn(wavs (B, T), lens (B,) relative) -> (B, D)``, called under ``no_grad``.
        wav_paths: audio files; the result keeps their order.
        durations: seconds per file (read from the file headers when not given), used to batch by length.
        max_seconds: cap per utterance (the start of the file is kept); ``None`` = full length. With a cap,
            one forward pass holds at most ``max(batch_seconds, max_seconds)`` seconds of audio.
        batch_seconds: total audio seconds per batch (at most ``max_batch`` files).
        normalize: L2-normalise the embeddings.
        read_fn: ``read_fn(i, max_seconds) -> (T,)`` reads file ``i`` (default: ``read_audio_file``).
        convert_audio: default reader: resample / average channels (one warning naming the files), or
            refuse such files (``BadAudioError``).
        num_workers: DataLoader worker processes that read and pad the batches (0: in this process).
            ``read_fn`` then runs in the workers (forked where the platform can fork: a closure is fine).
        distributed: under DDP (outside ``run_on_main``), every rank must call this with the same files:
            each embeds every world-th batch and all ranks return all the embeddings (all-gathered).
        pad: False (default): only files of equal length share a forward pass, so a file's embedding is that
            of the file alone (``EncoderClassifier.encode_batch`` of it); True: files of similar length are
            zero-padded into one batch (fewer passes, but ECAPA's convolutions see the padding's zeros, which
            changes a shorter file's embedding: on the MiniVox demo test files median cosine 0.997 to the
            file alone, worst 0.32).
    Returns:
        (N, D) float32 tensor on the CPU.
    Raises:
        BadAudioError: a file that is not audio, holds no sample or a NaN / inf sample (named).
    """
    out, _ = _embed_files(
        embed_fn, wav_paths, durations, max_seconds, batch_seconds, max_batch, sample_rate, device, normalize,
        progress, desc, read_fn, convert_audio, skip_bad=False, num_workers=num_workers, distributed=distributed, pad=pad,
    )
    return torch.stack(out)


@torch.no_grad()
def extract_readable_embeddings(
    embed_fn: EmbedFn, wav_paths: Sequence[str], **kwargs
) -> Tuple[torch.Tensor, List[int], Dict[str, str]]:
    """``extract_embeddings`` that leaves out the files that cannot be used instead of raising.

    Returns (embeddings (M, D) of the usable files, their indices in ``wav_paths``, {left-out path: reason}).
    """
    keys = ("durations", "max_seconds", "batch_seconds", "max_batch", "sample_rate", "device", "normalize",
            "progress", "desc", "read_fn", "convert_audio", "num_workers", "distributed", "pad")
    defaults = dict(durations=None, max_seconds=None, batch_seconds=240.0, max_batch=64, sample_rate=16000,
                    device="cpu", normalize=True, progress=True, desc="embeddings", read_fn=None, convert_audio=True,
                    num_workers=0, distributed=False, pad=False)
    unknown = set(kwargs) - set(keys)
    if unknown:
        raise TypeError(f"extract_readable_embeddings: unknown arguments {sorted(unknown)}")
    a = {**defaults, **kwargs}
    out, bad = _embed_files(embed_fn, wav_paths, *(a[k] for k in keys[:-3]), skip_bad=True,
                            num_workers=a["num_workers"], distributed=a["distributed"], pad=a["pad"])
    kept = [i for i, e in enumerate(out) if e is not None]
    if not kept:
        raise ValueError(f"none of the {len(wav_paths)} files could be used, e.g. {next(iter(bad.items()), None)}")
    return torch.stack([out[i] for i in kept]), kept, bad
