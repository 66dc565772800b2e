"""Speaker embeddings of any folder of recordings or CSV with an exported model (issue #15, item 3).

    python -m speechbrain_ssrl.embed --model <pretrained folder> --audio <folder | csv> --out <dir>
        [--device cpu] [--batch_size 32] [--max_seconds 240] [--normalize] [--pad_batches]

``--model``: an export (``<training output>/pretrained``, ``speechbrain_ssrl.export``), a training output
folder or a checkpoint folder (exported on the fly); it is loaded with SpeechBrain's ``EncoderClassifier``
and every embedding is its ``encode_batch`` output (not normalised unless ``--normalize``).

``--audio``: a folder (every audio file under it, any layout and format; the id is the path relative to the
folder) or a CSV: ``ID,wav[,start,stop]`` with start/stop in seconds, or a SpeechBrain CSV that has a
``duration`` column (``train.csv`` of ``prepare_voxceleb`` / ``prepare_folder``: start/stop in samples),
so the training segments themselves can be embedded. Audio is read with soundfile (files soundfile cannot
read, e.g. m4a, are decoded with ffmpeg), resampled to 16 kHz and averaged to mono where needed (counted
in one warning); at most ``--max_seconds`` from the start of each item are used (named in a warning).

``--out`` receives ``embeddings.npy`` (N, D) float32 and ``ids.txt`` (N lines, the same order as the
input), ``failed.tsv`` (``id<TAB>path<TAB>reason`` of the items that could not be read) and
``embed_info.json`` (model, options, N, D). Work is saved in ``parts/`` every chunk of items, so a killed
or repeated run embeds only what is not done yet (items that failed are tried again); the same options
are required (other options are refused).

Batches: an embedding does not depend on the batch it was computed in: only items with the same number of
samples share a batch (ECAPA's convolutions see a padded batch's zeros, which changes a shorter item's
embedding by up to tens of percent). ``--pad_batches`` pads items of different lengths into one batch
instead (faster on a GPU, embeddings then differ from ``encode_batch`` of the file alone).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from speechbrain_ssrl.embeddings import length_batches

logger = logging.getLogger("speechbrain_ssrl.embed")

__all__ = ["Item", "list_items", "read_item", "embed_items", "main"]

INFO_FILE = "embed_info.json"
PARTS = "parts"


class EmbedError(ValueError):
    """A refused input (the message names it and the fix)."""


@dataclass(frozen=True)
class Item:
    """One thing to embed: ``path`` samples [start, stop) (``stop`` None = to the end); ``unit`` is
    ``"s"`` (seconds) or ``"samples"`` (samples at the file's own rate)."""

    uid: str
    path: str
    start: float = 0.0
    stop: Optional[float] = None
    unit: str = "s"


# ------------------------------------------------------------------------------------------ inputs
def list_items(audio: str) -> List[Item]:
    """The items of ``--audio`` (a folder or a CSV), in order; refuses an empty or malformed input."""
    audio = os.path.abspath(os.path.expanduser(audio))
    if os.path.isdir(audio):
        from speechbrain_ssrl.data.folder import AUDIO_EXTENSIONS, find_audio_files

        files, _ = find_audio_files(audio)
        if not files:
            raise EmbedError(
                f"--audio={audio}: no audio file in it (looked for {' '.join(AUDIO_EXTENSIONS)} in every subfolder). "
                "Fix: pass the folder that holds the recordings, or a CSV of ID,wav[,start,stop]"
            )
        return [Item(os.path.relpath(p, audio).replace(os.sep, "/"), p) for p in files]
    if not os.path.isfile(audio):
        raise EmbedError(f"--audio={audio} does not exist. Fix: pass a folder of recordings or a CSV of ID,wav[,start,stop]")
    with open(audio, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    if "duration" in [h.strip() for h in header]:  # a SpeechBrain CSV: start / stop in samples
        from speechbrain_ssrl.data.views import read_csv_rows

        rows = read_csv_rows(audio)
        base = os.path.dirname(audio)
        return [
            Item(r["ID"], r["wav"] if os.path.isabs(r["wav"]) else os.path.join(base, r["wav"]),
                 float(r["start"] or 0), float(r["stop"]) if r.get("stop") else None, "samples")
            for r in rows
        ]
    from speechbrain_ssrl.data.folder import read_user_csv

    return [Item(r.uid, r.path, r.start, r.stop, "s") for r in read_user_csv(audio)]


def _ffmpeg_decode(path: str, sample_rate: int, start: float, seconds: Optional[float]) -> np.ndarray:
    if shutil.which("ffmpeg") is None:
        raise ValueError("soundfile cannot read it and ffmpeg is not installed (apt-get install ffmpeg)")
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
    if start:
        cmd += ["-ss", f"{start:.6f}"]
    cmd += ["-i", path]
    if seconds is not None:
        cmd += ["-t", f"{seconds:.6f}"]
    cmd += ["-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]
    res = subprocess.run(cmd, capture_output=True, check=False)
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip().splitlines()
        raise ValueError(f"ffmpeg could not decode it ({err[-1] if err else res.returncode})")
    return np.frombuffer(res.stdout, dtype=np.float32).copy()


def read_item(item: Item, sample_rate: int = 16000, max_seconds: Optional[float] = None) -> Tuple[torch.Tensor, List[str]]:
    """(the item's waveform (T,) at ``sample_rate``, mono; notes on what was changed). ValueError for an
    item that cannot be used (the reason)."""
    import soundfile as sf

    from speechbrain_ssrl.data.views import BadAudioError, read_checked
    from speechbrain_ssrl.embeddings import resample

    notes: List[str] = []
    try:
        info = sf.info(item.path)
    except Exception:  # noqa: BLE001 - not readable by soundfile: ffmpeg decodes it (m4a, ...)
        info = None
    if info is None:
        if item.unit == "samples":
            raise ValueError("soundfile cannot read it, and its start/stop are in samples of the file's own rate")
        length = None if item.stop is None else item.stop - item.start
        if max_seconds is not None and (length is None or length > max_seconds):
            length = float(max_seconds)
            notes.append(f"cut to its first {max_seconds:g} s")
        x = _ffmpeg_decode(item.path, sample_rate, item.start, length)
        if x.size == 0:
            raise ValueError("no audio samples")
        if not np.isfinite(x).all():
            raise ValueError("non-finite samples (NaN or inf)")
        return torch.from_numpy(x), notes + ["decoded with ffmpeg"]
    rate = int(info.samplerate)
    scale = 1.0 if item.unit == "samples" else rate
    a = int(round(item.start * scale))
    b = info.frames if item.stop is None else min(int(round(item.stop * scale)), info.frames)
    if max_seconds is not None and b - a > int(round(max_seconds * rate)):
        b = a + int(round(max_seconds * rate))
        notes.append(f"cut to its first {max_seconds:g} s")
    if b <= a:
        raise ValueError(f"empty range (start {item.start:g}, stop {item.stop}) for a file of {info.frames} samples")
    try:
        wav = read_checked(item.path, a, b)
    except BadAudioError as e:
        raise ValueError(e.reason) from None
    if info.channels != 1:
        notes.append(f"{info.channels} channels averaged")
    if rate != sample_rate:
        wav = resample(wav, rate, sample_rate)
        notes.append(f"resampled from {rate} Hz")
    return wav, notes


# ------------------------------------------------------------------------------------------ batching
@torch.no_grad()
def _embed_chunk(embed_fn, wavs: List[torch.Tensor], batch_size, batch_seconds, sample_rate, pad, device) -> np.ndarray:
    embs: List[Optional[np.ndarray]] = [None] * len(wavs)
    for b in length_batches([len(w) for w in wavs], max(1, int(batch_seconds * sample_rate)), batch_size, pad):
        T = max(len(wavs[i]) for i in b)
        x = torch.zeros(len(b), T)
        for j, i in enumerate(b):
            x[j, : len(wavs[i])] = wavs[i]
        lens = torch.tensor([len(wavs[i]) / T for i in b])
        e = embed_fn(x.to(device), lens.to(device)).float().reshape(len(b), -1).cpu().numpy()
        if not np.isfinite(e).all():
            raise FloatingPointError("non-finite embeddings from finite audio: the model's weights hold NaN/inf")
        for j, i in enumerate(b):
            embs[i] = e[j]
    return np.stack(embs).astype(np.float32)


# ------------------------------------------------------------------------------------------ resumable output
def _load_parts(out: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str], int]:
    """(embedding of every finished id, {failed id: reason}, next part number) of ``out/parts``."""
    done: Dict[str, np.ndarray] = {}
    failed: Dict[str, str] = {}
    parts = sorted(glob.glob(os.path.join(out, PARTS, "part-*.json")))
    for meta_path in parts:
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            emb = np.load(meta_path[:-5] + ".npy") if meta["ids"] else np.zeros((0, 0), np.float32)
        except (OSError, ValueError, KeyError):
            continue  # a part cut by a kill: redone
        if len(emb) != len(meta["ids"]):
            continue
        done.update(zip(meta["ids"], emb))
        failed.update(meta.get("failed", {}))
    nxt = 1 + max([int(os.path.basename(p)[5:-5]) for p in parts] or [-1])
    return done, failed, nxt


def _save_part(out: str, k: int, ids: List[str], emb: np.ndarray, failed: Dict[str, str]) -> None:
    d = os.path.join(out, PARTS)
    os.makedirs(d, exist_ok=True)
    base = os.path.join(d, f"part-{k:06d}")
    if ids:
        np.save(base + ".tmp.npy", emb)
        os.replace(base + ".tmp.npy", base + ".npy")
    with open(base + ".json.tmp", "w", encoding="utf-8") as f:  # written last: it marks the part complete
        json.dump({"ids": ids, "failed": failed}, f)
    os.replace(base + ".json.tmp", base + ".json")


def _check_options(out: str, info: dict) -> None:
    path = os.path.join(out, INFO_FILE)
    if not os.path.isfile(path):
        os.makedirs(out, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
        return
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    diff = [k for k in info["options"] if old.get("options", {}).get(k) != info["options"][k]]
    if diff:
        raise EmbedError(
            f"--out={out} holds embeddings made with other options ("
            + "; ".join(f"{k}: {old['options'].get(k)!r} then, {info['options'][k]!r} now" for k in diff)
            + "). Fix: pass another --out, or delete that folder to start again"
        )


def embed_items(
    embed_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    items: Sequence[Item],
    out: str,
    *,
    options: Optional[dict] = None,
    sample_rate: int = 16000,
    batch_size: int = 32,
    batch_seconds: float = 240.0,
    max_seconds: Optional[float] = 240.0,
    normalize: bool = False,
    pad_batches: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> Dict[str, object]:
    """Embeds ``items`` into ``out`` (see the module docstring); resumes from ``out/parts``. Returns a summary."""
    out = os.path.abspath(out)
    ids = [it.uid for it in items]
    if len(set(ids)) != len(ids):
        dup = next(u for i, u in enumerate(ids) if u in ids[:i])
        raise EmbedError(f"the id {dup!r} is used twice in the input. Fix: make the IDs unique")
    opts = dict(options or {}, sample_rate=sample_rate, max_seconds=max_seconds, normalize=normalize, pad_batches=pad_batches)
    _check_options(out, {"options": opts})
    done, _, part = _load_parts(out)  # items that failed before are tried again
    failed: Dict[str, str] = {}
    todo = [it for it in items if it.uid not in done]
    if done or failed:
        logger.info("%s: %d of %d items already done, %d to embed", out, len(items) - len(todo), len(items), len(todo))
    changed: Dict[str, List[str]] = {}
    bar = tqdm(total=len(todo), desc="embeddings", unit="item", disable=not progress)
    chunk_items: List[Item] = []
    chunk_wavs: List[torch.Tensor] = []
    chunk_failed: Dict[str, str] = {}
    cap = max(int(batch_seconds * sample_rate), 1)

    def flush() -> None:
        nonlocal part, chunk_items, chunk_wavs, chunk_failed
        if not chunk_items and not chunk_failed:
            return
        emb = (_embed_chunk(embed_fn, chunk_wavs, batch_size, batch_seconds, sample_rate, pad_batches, device)
               if chunk_wavs else np.zeros((0, 0), np.float32))
        if normalize and len(emb):
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        _save_part(out, part, [it.uid for it in chunk_items], emb, chunk_failed)
        done.update(zip([it.uid for it in chunk_items], emb))
        failed.update(chunk_failed)
        bar.update(len(chunk_items) + len(chunk_failed))
        part += 1
        chunk_items, chunk_wavs, chunk_failed = [], [], {}

    for it in todo:
        try:
            wav, notes = read_item(it, sample_rate, max_seconds)
        except Exception as e:  # noqa: BLE001 - one unusable item: listed in failed.tsv
            chunk_failed[it.uid] = str(e).strip() or type(e).__name__
        else:
            if notes:
                changed[it.uid] = notes
            chunk_items.append(it)
            chunk_wavs.append(wav)
        if sum(len(w) for w in chunk_wavs) >= cap or len(chunk_items) >= 8 * batch_size:
            flush()
    flush()
    bar.close()

    kept = [it for it in items if it.uid in done]
    if not kept:
        raise EmbedError(
            f"none of the {len(items)} items could be embedded (e.g. {next(iter(failed.items()), None)}); "
            f"see {os.path.join(out, 'failed.tsv')}. Fix: check the audio paths and formats"
        )
    dim = int(len(done[kept[0].uid]))
    mm = np.lib.format.open_memmap(os.path.join(out, "embeddings.tmp.npy"), mode="w+", dtype=np.float32, shape=(len(kept), dim))
    for i, it in enumerate(kept):
        mm[i] = done[it.uid]
    mm.flush()
    del mm
    os.replace(os.path.join(out, "embeddings.tmp.npy"), os.path.join(out, "embeddings.npy"))
    with open(os.path.join(out, "ids.txt"), "w", encoding="utf-8") as f:
        f.writelines(it.uid + "\n" for it in kept)
    path_of = {it.uid: it.path for it in items}
    bad = [(u, path_of[u], failed[u]) for u in ids if u in failed]
    with open(os.path.join(out, "failed.tsv"), "w", encoding="utf-8") as f:
        f.writelines(f"{u}\t{p}\t{why}\n" for u, p, why in bad)
    if changed:
        shown = "; ".join(f"{u}: {', '.join(n)}" for u, n in list(changed.items())[:5])
        logger.warning("%d item(s) were changed before embedding (%s%s)", len(changed), shown, "; ..." if len(changed) > 5 else "")
    if bad:
        logger.warning("%d item(s) could not be read, listed in %s (e.g. %s: %s)", len(bad), os.path.join(out, "failed.tsv"), bad[0][0], bad[0][2])
    summary = {"options": opts, "n": len(kept), "dim": dim, "failed": len(bad)}
    with open(os.path.join(out, INFO_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


# ------------------------------------------------------------------------------------------ command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m speechbrain_ssrl.embed", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="exported model folder (<training output>/pretrained), a training output or checkpoint folder")
    ap.add_argument("--audio", required=True, help="a folder of recordings, or a CSV ID,wav[,start,stop] (seconds) / a SpeechBrain CSV")
    ap.add_argument("--out", required=True, help="output folder: embeddings.npy, ids.txt, failed.tsv, embed_info.json")
    ap.add_argument("--device", default=None, help="cpu, cuda:0, ... (default: cuda:0 when available)")
    ap.add_argument("--batch_size", type=int, default=32, help="items per batch at most")
    ap.add_argument("--batch_seconds", type=float, default=240.0, help="audio seconds per batch (and per saved chunk) at most")
    ap.add_argument("--max_seconds", type=float, default=240.0, help="seconds used from the start of each item (<= 0: all; memory grows with it)")
    ap.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    ap.add_argument("--pad_batches", action="store_true", help="pad items of different lengths into one batch (faster; embeddings then depend on the batch)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--noprogressbar", action="store_true")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = a.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    if a.threads:
        torch.set_num_threads(int(a.threads))
    try:
        if a.batch_size < 1:
            raise EmbedError(f"--batch_size={a.batch_size}: pass a number >= 1")
        items = list_items(a.audio)
        from speechbrain_ssrl.export import load_embed_fn

        model = os.path.abspath(os.path.expanduser(a.model))
        embed_fn, desc = load_embed_fn(model, device=device)
        logger.info("model %s | %d items from %s | device %s | output %s", desc, len(items), a.audio, device, a.out)
        res = embed_items(
            embed_fn, items, a.out, options={"model": model}, batch_size=a.batch_size, batch_seconds=a.batch_seconds,
            max_seconds=a.max_seconds if a.max_seconds and a.max_seconds > 0 else None, normalize=a.normalize,
            pad_batches=a.pad_batches, device=device, progress=not a.noprogressbar,
        )
    except Exception as e:  # noqa: BLE001 - one line unless --debug
        from speechbrain_ssrl.export import ExportError

        if a.debug or not isinstance(e, (EmbedError, ExportError, OSError, ValueError)):
            raise
        raise SystemExit(f"embed stopped: {str(e).strip()} (--debug shows the traceback)") from None
    print(f"{res['n']} embeddings of dimension {res['dim']} in {os.path.join(os.path.abspath(a.out), 'embeddings.npy')} "
          f"(ids.txt; {res['failed']} failed, failed.tsv)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
