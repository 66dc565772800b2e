"""Random crops and training views read from a prepared SpeechBrain CSV.

* ``CropSampler`` draws crop offsets from ``(seed, epoch, utterance index, view)``, so that a resumed
  or re-run epoch sees exactly the same crops, whatever the number of DataLoader workers.
* ``read_crop`` reads only the samples it needs; files shorter than the crop are tiled.
* ``multicrop_dataset`` (DINO): ``global_views`` (B, n_global, T_g) and ``local_views`` (B, n_local, T_l).
* ``student_teacher_dataset`` (SSRL): a short ``student_view`` and a long ``teacher_view`` of the same
  utterance, plus the utterance's ``index`` (its row in the CSV), which the pseudo-label state uses.
* Every reader of training audio (the training views, the clean crops of BN re-estimation, the initial
  clustering's embeddings, an AS-norm cohort taken from the training CSV) goes through one checked read,
  ``read_checked``: a file that does not decode, holds no sample, a non-finite sample or another sample
  rate raises ``BadAudioError``. ``read_with_fallback`` then replaces the row by the next row of the
  CSV that reads (the item carries that row's ``index`` and crops, so pseudo labels stay consistent and
  a re-run draws the same replacement) and ``BadFileList`` records the file, once, in
  ``skipped_files.txt`` next to the CSV (one warning); every later read, in any process, skips it
  without decoding it again.

The ``spk_id`` column is never read here: self-supervised training must not see speaker labels.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
import torch

import speechbrain as sb
from speechbrain.dataio.dataset import DynamicItemDataset

from speechbrain_ssrl.data.voxceleb import SKIPPED_FILE

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


class BadAudioError(ValueError):
    """An audio file that cannot be used: it does not decode, holds no sample, a non-finite sample or
    another sample rate. ``path`` and ``reason`` name the file and the problem."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def read_checked(path: str, start: int = 0, stop: Optional[int] = None, sample_rate: Optional[int] = None) -> torch.Tensor:
    """Samples [start, stop) of ``path`` as a float32 mono tensor (channels averaged), read with soundfile.

    Raises ``BadAudioError`` when the file does not decode, the segment holds no sample, a sample is
    NaN/inf, or the file's rate is not ``sample_rate`` (when given).
    """
    try:
        data, rate = sf.read(path, start=int(start), stop=None if stop is None else int(stop), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile raises RuntimeError / LibsndfileError / OSError ...
        raise BadAudioError(path, f"not readable as audio ({str(e).strip() or type(e).__name__})") from None
    if sample_rate is not None and int(rate) != int(sample_rate):
        raise BadAudioError(path, f"sample rate {rate} Hz, not {sample_rate} Hz")
    if data.shape[0] == 0:
        raise BadAudioError(path, "no audio samples (a header only, or an empty segment)")
    wav = torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0].copy())
    if not bool(torch.isfinite(wav).all()):
        raise BadAudioError(path, "non-finite samples (NaN or inf)")
    return wav


def read_crop(
    path: str, start: int, stop: int, n: int, rng: np.random.Generator, sample_rate: Optional[int] = None
) -> torch.Tensor:
    """A random ``n``-sample crop of samples [start, stop) of ``path``; shorter files are tiled.

    The read is ``read_checked`` (``BadAudioError`` for an unusable file or segment).
    """
    total = int(stop) - int(start)
    if total <= 0:
        raise BadAudioError(path, f"empty segment (start={start}, stop={stop}) in the CSV; re-run the preparation")
    if total >= n:
        off = int(start) + int(rng.integers(0, total - n + 1))
        wav = read_checked(path, off, off + n, sample_rate)
    else:
        wav = read_checked(path, int(start), int(stop), sample_rate)
    if wav.shape[0] < n:  # tile (short file, or a header that over-states the length)
        reps = math.ceil(n / wav.shape[0]) + 1
        tiled = wav.repeat(reps)
        off = int(rng.integers(0, wav.shape[0]))
        wav = tiled[off : off + n]
    return wav


class BadFileList:
    """The unusable training files of a run: ``path<TAB>reason`` lines of ``skipped_files.txt``.

    ``path`` is the list's file (``None``: kept in memory only). The file is shared by every process of
    the run (DataLoader workers, DDP ranks): it is re-read when it changed, so a bad file is decoded,
    reported (one warning) and recorded once, and every later read skips it without decoding it.
    The data preparation writes the same file (the files it left out of the CSV, with the reason).
    """

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path
        self._reasons: Dict[str, str] = {}
        self._stamp: Optional[Tuple[int, int]] = None

    def _reload(self) -> None:
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                wav, _, why = line.rstrip("\n").partition("\t")
                if wav:
                    self._reasons.setdefault(wav, why or "bad file")
        self._stamp = stamp

    def reason(self, wav: str) -> Optional[str]:
        """Why ``wav`` is unusable, or None when it is not (yet) known to be."""
        self._reload()
        return self._reasons.get(wav)

    def add(self, wav: str, reason: str, where: str = "", action: str = "left out from now on") -> bool:
        """Records ``wav`` (with a warning) unless it is already known; True when it was new."""
        if self.reason(wav) is not None:
            return False
        self._reasons[wav] = reason
        listed = ""
        if self.path is not None:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(f"{wav}\t{reason}\n")
                listed = f", listed in {self.path}"
            except OSError as e:
                logger.warning("could not add %s to %s: %s", wav, self.path, e)
        logger.warning("unusable training file %s%s: %s; %s%s", wav, where, reason, action, listed)
        return True


_PROCESS_BAD_FILES = BadFileList(None)
_BAD_FILE_LISTS: Dict[str, BadFileList] = {}


def bad_file_list(csv_path: Optional[str]) -> BadFileList:
    """The ``BadFileList`` of a training CSV (``skipped_files.txt`` in the CSV's folder); one per process.
    ``None``: a list kept in this process's memory only."""
    if csv_path is None:
        return _PROCESS_BAD_FILES
    path = os.path.join(os.path.dirname(os.path.abspath(csv_path)), SKIPPED_FILE)
    if path not in _BAD_FILE_LISTS:
        _BAD_FILE_LISTS[path] = BadFileList(path)
    return _BAD_FILE_LISTS[path]


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


def _speaker_names(rows: Sequence[Dict[str, str]]) -> Optional[List[str]]:
    if not rows or "spk_id" not in rows[0] or not all(r.get("spk_id") for r in rows):
        return None
    return sorted({r["spk_id"] for r in rows})


def true_speakers(csv_path: str) -> Tuple[Optional[torch.Tensor], Optional[List[str]]]:
    """``(true_speaker_ids, true_speaker_names)`` of a prepared CSV from one read of it (diagnostics only);
    ``(None, None)`` when the ``spk_id`` column is absent or has an empty cell."""
    rows = read_csv_rows(csv_path)
    names = _speaker_names(rows)
    if names is None:
        return None, None
    number = {s: i for i, s in enumerate(names)}
    return torch.tensor([number[r["spk_id"]] for r in rows], dtype=torch.long), names


def true_speaker_names(csv_path: str) -> Optional[List[str]]:
    """The sorted distinct ``spk_id`` values of a prepared CSV: name of true speaker id i is the i-th (the
    numbering of ``true_speaker_ids``); ``None`` when the column is absent or has an empty cell."""
    return _speaker_names(read_csv_rows(csv_path))


def true_speaker_ids(csv_path: str) -> Optional[torch.Tensor]:
    """Integer true speaker ids of a prepared CSV's rows (the sorted ``spk_id`` values numbered 0..S-1, as named
    by ``true_speaker_names``), for diagnostics only; ``None`` when the column is absent or has an empty cell."""
    return true_speakers(csv_path)[0]


#: rows tried (the failing one and the next ones, cyclically) before a decoding failure is fatal
MAX_DECODE_TRIES = 16
_reported_replacements: set = set()


def _all_finite(out) -> bool:
    parts = out if isinstance(out, (tuple, list)) else (out,)
    return all(bool(torch.isfinite(t).all()) for t in parts)


def read_with_fallback(
    rows: Sequence[Dict[str, str]],
    index: int,
    read_fn: Callable[[int], object],
    max_tries: int = MAX_DECODE_TRIES,
    bad_files: Optional[BadFileList] = None,
):
    """``(j, read_fn(j))`` for the first row ``j`` of ``index, index+1, ...`` (cyclic) that reads.

    ``read_fn(j)`` returns a tensor or a tuple of tensors; an exception or a non-finite sample makes the
    row's file bad: it is recorded in ``bad_files`` (default: this process's memory), with one warning,
    and never decoded again. Raises RuntimeError when ``max_tries`` rows in a row are bad (a corpus
    problem, not a bad file).
    """
    bad_files = _PROCESS_BAD_FILES if bad_files is None else bad_files
    n = len(rows)
    errors = []
    for k in range(min(int(max_tries), n)):
        j = (int(index) + k) % n
        path = rows[j].get("wav", "?")
        known = bad_files.reason(path)
        if known is not None:
            errors.append(f"{path}: {known}")
            continue
        try:
            out = read_fn(j)
            if not _all_finite(out):
                raise BadAudioError(path, "non-finite samples (NaN or inf)")
        except Exception as e:  # noqa: BLE001 - any problem of one file
            why = e.reason if isinstance(e, BadAudioError) else f"{type(e).__name__}: {e}"
            errors.append(f"{path}: {why}")
            bad_files.add(
                path, why, f" (CSV row {j}, ID {rows[j].get('ID', '?')})",
                "the next CSV row that reads is used instead, now and in every later read",
            )
            continue
        if k:
            logger.log(
                logging.DEBUG if (index, j) in _reported_replacements else logging.INFO,
                "row %d (ID %s) replaced by row %d (ID %s, %s)",
                index, rows[index].get("ID", "?"), j, rows[j].get("ID", "?"), rows[j].get("wav", "?"),
            )
            _reported_replacements.add((index, j))
        return j, out
    raise RuntimeError(
        f"{len(errors)} consecutive training files (from CSV row {index}) could not be read:\n  "
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
    bad = bad_file_list(csv_path)
    ng, nl = int(round(global_seconds * sample_rate)), int(round(local_seconds * sample_rate))

    def read(j: int):
        wav, start, stop = rows[j]["wav"], int(rows[j]["start"]), int(rows[j]["stop"])
        g = torch.stack([read_crop(wav, start, stop, ng, sampler.rng(j, v), sample_rate) for v in range(n_global)])
        if n_local > 0:
            loc = torch.stack(
                [read_crop(wav, start, stop, nl, sampler.rng(j, n_global + v), sample_rate) for v in range(n_local)]
            )
        else:
            loc = torch.zeros(0, nl)
        return g, loc

    @sb.utils.data_pipeline.takes("id", "wav", "start", "stop")
    @sb.utils.data_pipeline.provides("index", "global_views", "local_views")
    def views(uid, wav, start, stop):
        idx, (g, loc) = read_with_fallback(rows, index_of[uid], read, bad_files=bad)
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
    bad = bad_file_list(csv_path)
    ns, nt = int(round(student_seconds * sample_rate)), int(round(teacher_seconds * sample_rate))

    def read(j: int):
        wav, start, stop = rows[j]["wav"], int(rows[j]["start"]), int(rows[j]["stop"])
        student = read_crop(wav, start, stop, ns, sampler.rng(j, 0), sample_rate)
        return student, read_crop(wav, start, stop, nt, sampler.rng(j, 1), sample_rate)

    @sb.utils.data_pipeline.takes("id", "wav", "start", "stop")
    @sb.utils.data_pipeline.provides("index", "student_view", "teacher_view")
    def views(uid, wav, start, stop):
        idx, (student, teacher) = read_with_fallback(rows, index_of[uid], read, bad_files=bad)
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
    bad_files: Optional[BadFileList] = None,
):
    """Yields ``n_batches`` batches (B, T) of clean random crops of training utterances (BN re-estimation).

    Crops are read like the training views (``read_with_fallback``): a bad file is replaced by the next
    row that reads and recorded in ``bad_files`` (``bad_file_list(train_csv)`` in the recipe).
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))

    def crop(j: int) -> torch.Tensor:
        r = rows[j]
        return read_crop(r["wav"], int(r["start"]), int(r["stop"]), n, rng, sample_rate)

    for _ in range(int(n_batches)):
        pick = rng.choice(len(rows), size=min(batch_size, len(rows)), replace=len(rows) < batch_size)
        yield torch.stack([read_with_fallback(rows, int(i), crop, bad_files=bad_files)[1] for i in pick])
