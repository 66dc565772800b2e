"""Random crops and training views read from a prepared SpeechBrain CSV.

* ``CropSampler`` draws crop offsets from ``(seed, epoch, utterance index, view)``, so that a resumed
  or re-run epoch sees exactly the same crops, whatever the number of DataLoader workers.
* ``read_crop`` reads only the samples it needs; files shorter than the crop are tiled.
* ``multicrop_dataset`` (DINO): ``global_views`` (B, n_global, T_g) and ``local_views`` (B, n_local, T_l).
* ``student_teacher_dataset`` (SSRL): a short ``student_view`` and a long ``teacher_view`` of the same
  utterance, plus the utterance's ``index`` (its row in the CSV), which the pseudo-label state uses.
* An audio file that fails to decode during training (or yields non-finite samples) is logged and
  replaced by the next row of the CSV that decodes (``read_with_fallback``); the item then carries that
  row's ``index`` and crops, so pseudo labels stay consistent and a re-run draws the same replacement.

The ``spk_id`` column is never read here: self-supervised training must not see speaker labels.
"""

from __future__ import annotations

import csv
import logging
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

import speechbrain as sb
from speechbrain.dataio.dataio import read_audio
from speechbrain.dataio.dataset import DynamicItemDataset

logger = logging.getLogger(__name__)


class CropSampler:
    """Deterministic crop offsets: ``rng(index, view)`` depends on (seed, epoch, index, view) only."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, index: int, view: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index), int(view)])


def read_crop(path: str, start: int, stop: int, n: int, rng: np.random.Generator) -> torch.Tensor:
    """A random ``n``-sample crop of samples [start, stop) of ``path``; shorter files are tiled."""
    total = int(stop) - int(start)
    if total <= 0:
        raise ValueError(f"{path}: empty segment (start={start}, stop={stop}) in the CSV; re-run the preparation")
    if total >= n:
        off = int(start) + int(rng.integers(0, total - n + 1))
        wav = read_audio({"file": path, "start": off, "stop": off + n})
    else:
        wav = read_audio({"file": path, "start": int(start), "stop": int(stop)})
    if wav.dim() > 1:
        wav = wav.mean(-1)
    wav = wav.float()
    if wav.shape[0] < n:  # tile (short file, or a header that over-states the length)
        if wav.shape[0] == 0:
            raise ValueError(f"{path}: no audio samples could be read")
        reps = math.ceil(n / wav.shape[0]) + 1
        tiled = wav.repeat(reps)
        off = int(rng.integers(0, wav.shape[0]))
        wav = tiled[off : off + n]
    return wav


def read_csv_rows(csv_path: str) -> List[Dict[str, str]]:
    """Rows of a prepared CSV (header ``ID,duration,wav,start,stop[,spk_id]``), in file order."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path} has no rows: re-run the data preparation (see voxceleb_prepare.py)")
    for key in ("ID", "wav", "start", "stop"):
        if key not in rows[0]:
            raise ValueError(f"{csv_path} lacks the column {key!r}: prepare it with prepare_voxceleb()")
    return rows


#: rows tried (the failing one and the next ones, cyclically) before a decoding failure is fatal
MAX_DECODE_TRIES = 16
_reported_bad_files: set = set()


def read_with_fallback(rows: Sequence[Dict[str, str]], index: int, read_fn, max_tries: int = MAX_DECODE_TRIES):
    """``(j, read_fn(j))`` for the first row ``j`` of ``index, index+1, ...`` (cyclic) that decodes.

    ``read_fn(j)`` returns a tensor or a tuple of tensors; an exception or a non-finite sample counts as
    a decoding failure. Each failure is logged with the file (a warning the first time per process).
    Raises RuntimeError when ``max_tries`` rows in a row fail (a corpus problem, not a bad file).
    """
    n = len(rows)
    errors = []
    for k in range(min(int(max_tries), n)):
        j = (int(index) + k) % n
        try:
            out = read_fn(j)
            parts = out if isinstance(out, (tuple, list)) else (out,)
            if not all(bool(torch.isfinite(t).all()) for t in parts):
                raise ValueError("non-finite samples")
        except Exception as e:  # noqa: BLE001 - any decoding problem of one file
            path = rows[j].get("wav", "?")
            errors.append(f"{path}: {type(e).__name__}: {e}")
            level = logging.DEBUG if path in _reported_bad_files else logging.WARNING
            _reported_bad_files.add(path)
            logger.log(
                level,
                "could not decode %s (CSV row %d, ID %s): %s: %s; using the next row instead",
                path, j, rows[j].get("ID", "?"), type(e).__name__, e,
            )
            continue
        if k:
            logger.log(
                logging.DEBUG if (index, j) in _reported_bad_files else logging.WARNING,
                "row %d (ID %s) replaced by row %d (ID %s, %s) in this batch",
                index, rows[index].get("ID", "?"), j, rows[j].get("ID", "?"), rows[j].get("wav", "?"),
            )
            _reported_bad_files.add((index, j))
        return j, out
    raise RuntimeError(
        f"{len(errors)} consecutive training files (from CSV row {index}) could not be decoded:\n  "
        + "\n  ".join(errors)
        + "\nCheck the corpus (disk, mount, conversion) and re-run the data preparation."
    )


def _dataset(csv_path: str) -> Tuple[DynamicItemDataset, Dict[str, int], List[Dict[str, str]]]:
    rows = read_csv_rows(csv_path)
    index_of = {r["ID"]: i for i, r in enumerate(rows)}
    ds = DynamicItemDataset.from_csv(csv_path)
    return ds, index_of, rows


def multicrop_dataset(
    csv_path: str,
    sampler: CropSampler,
    n_global: int = 2,
    global_seconds: float = 4.0,
    n_local: int = 4,
    local_seconds: float = 2.0,
    sample_rate: int = 16000,
) -> DynamicItemDataset:
    """DINO views: ``global_views`` (n_global, T_g) and ``local_views`` (n_local, T_l) per utterance."""
    ds, index_of, rows = _dataset(csv_path)
    ng, nl = int(round(global_seconds * sample_rate)), int(round(local_seconds * sample_rate))

    def read(j: int):
        wav, start, stop = rows[j]["wav"], int(rows[j]["start"]), int(rows[j]["stop"])
        g = torch.stack([read_crop(wav, start, stop, ng, sampler.rng(j, v)) for v in range(n_global)])
        if n_local > 0:
            loc = torch.stack([read_crop(wav, start, stop, nl, sampler.rng(j, n_global + v)) for v in range(n_local)])
        else:
            loc = torch.zeros(0, nl)
        return g, loc

    @sb.utils.data_pipeline.takes("id", "wav", "start", "stop")
    @sb.utils.data_pipeline.provides("index", "global_views", "local_views")
    def views(uid, wav, start, stop):
        idx, (g, loc) = read_with_fallback(rows, index_of[uid], read)
        yield idx
        yield g
        yield loc

    sb.dataio.dataset.add_dynamic_item([ds], views)
    ds.set_output_keys(["id", "index", "global_views", "local_views"])
    return ds


def student_teacher_dataset(
    csv_path: str,
    sampler: CropSampler,
    student_seconds: float = 2.0,
    teacher_seconds: float = 6.0,
    sample_rate: int = 16000,
) -> DynamicItemDataset:
    """SSRL views: a short ``student_view`` and a long clean ``teacher_view`` of the same utterance."""
    ds, index_of, rows = _dataset(csv_path)
    ns, nt = int(round(student_seconds * sample_rate)), int(round(teacher_seconds * sample_rate))

    def read(j: int):
        wav, start, stop = rows[j]["wav"], int(rows[j]["start"]), int(rows[j]["stop"])
        return read_crop(wav, start, stop, ns, sampler.rng(j, 0)), read_crop(wav, start, stop, nt, sampler.rng(j, 1))

    @sb.utils.data_pipeline.takes("id", "wav", "start", "stop")
    @sb.utils.data_pipeline.provides("index", "student_view", "teacher_view")
    def views(uid, wav, start, stop):
        idx, (student, teacher) = read_with_fallback(rows, index_of[uid], read)
        yield idx
        yield student
        yield teacher

    sb.dataio.dataset.add_dynamic_item([ds], views)
    ds.set_output_keys(["id", "index", "student_view", "teacher_view"])
    return ds


def clean_crop_batches(
    rows: Sequence[Dict[str, str]],
    n_batches: int,
    batch_size: int,
    seconds: float,
    seed: int = 123,
    sample_rate: int = 16000,
):
    """Yields ``n_batches`` batches (B, T) of clean random crops of training utterances (BN re-estimation)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    for _ in range(int(n_batches)):
        pick = rng.choice(len(rows), size=min(batch_size, len(rows)), replace=len(rows) < batch_size)
        yield torch.stack(
            [read_crop(rows[i]["wav"], int(rows[i]["start"]), int(rows[i]["stop"]), n, rng) for i in pick]
        )
