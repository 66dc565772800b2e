"""CSV manifests of noise and room-impulse-response folders for ``speechbrain.augment``.

``speechbrain.augment.time_domain.AddNoise(csv_file=...)`` and ``AddReverb(csv_file=...)`` read a CSV
with the header ``ID,duration,wav,wav_format,wav_opts``. :func:`make_augment_csv` writes it for any
folder of audio files: MiniVox's ``noise/`` and ``rir/``, or a real MUSAN / RIRS_NOISES download.

Unlike ``speechbrain.augment.preparation.write_csv``, it never modifies the source folder: files longer
than ``max_length`` and multi-channel files are written as mono pieces into a side folder next to the
CSV (``<csv stem>_pieces/``), and the CSV points at the pieces.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

__all__ = ["make_augment_csv", "AUGMENT_CSV_HEADER"]

logger = logging.getLogger(__name__)

AUGMENT_CSV_HEADER = ["ID", "duration", "wav", "wav_format", "wav_opts"]


def _find_audio(folder: str, exts: Sequence[str]) -> List[str]:
    """All files under ``folder`` (recursively) whose extension is in ``exts``, sorted."""
    suffixes = tuple("." + e.lower().lstrip(".") for e in exts)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(suffixes):
                found.append(os.path.join(dirpath, name))
    return sorted(found)


def _is_up_to_date(csv_file: str, folder: str, files: Sequence[str]) -> bool:
    """True when ``csv_file`` exists and is newer than ``folder`` and every file in it."""
    if not os.path.isfile(csv_file):
        return False
    csv_time = os.path.getmtime(csv_file)
    newest = max([os.path.getmtime(folder)] + [os.path.getmtime(f) for f in files])
    return csv_time >= newest


def _safe_id(rel: str) -> str:
    """A CSV-friendly utterance id from a relative path."""
    stem = os.path.splitext(rel)[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem.replace(os.sep, "/").replace("/", "_"))


def make_augment_csv(
    folder: str,
    csv_file: str,
    max_length: Optional[float] = None,
    exts: Sequence[str] = ("wav",),
) -> str:
    """Writes the ``AddNoise``/``AddReverb`` CSV for all audio files under ``folder`` (recursively).

    Args:
        folder: a folder of audio files (searched recursively), e.g. ``<minivox>/noise``,
            ``musan/noise`` or ``RIRS_NOISES/simulated_rirs``.
        csv_file: the CSV to write (``ID,duration,wav,wav_format,wav_opts``, absolute paths).
        max_length: seconds; longer recordings are cut into pieces of at most this length, written
            as mono files into ``<csv_file without .csv>_pieces/`` (the source stays untouched).
        exts: file extensions to include.
    Returns:
        ``csv_file``. Nothing is done when it exists and is newer than the folder and its files.
    Raises:
        FileNotFoundError: ``folder`` does not exist or holds no audio file.
    """
    folder = os.path.abspath(os.fspath(folder))
    csv_file = os.path.abspath(os.fspath(csv_file))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"augmentation folder {folder} does not exist: point the noise/RIR folder option at a folder "
            "of audio files (MiniVox writes <root>/noise and <root>/rir; or use MUSAN / RIRS_NOISES)"
        )
    files = _find_audio(folder, exts)
    if not files:
        raise FileNotFoundError(
            f"no {'/'.join(exts)} file found under {folder}: it is empty or holds other formats; "
            "convert the recordings to wav or pass exts=(...)"
        )
    if _is_up_to_date(csv_file, folder, files):
        logger.info("%s is up to date, skipping", csv_file)
        return csv_file

    pieces_dir = os.path.splitext(csv_file)[0] + "_pieces"
    rows: List[Tuple[str, str, str, str, str]] = []
    used_ids: set = set()
    for path in files:
        try:
            info = sf.info(path)
        except Exception as err:  # noqa: BLE001 - libsndfile raises several types
            logger.warning("skipping unreadable augmentation file %s: %s", path, err)
            continue
        if info.frames <= 0:
            logger.warning("skipping empty augmentation file %s", path)
            continue
        base_id = _safe_id(os.path.relpath(path, folder))
        uid = base_id
        k = 1
        while uid in used_ids:
            uid, k = f"{base_id}_{k}", k + 1
        used_ids.add(uid)
        fmt = os.path.splitext(path)[1].lstrip(".").lower()
        duration = info.frames / info.samplerate
        too_long = max_length is not None and duration > max_length
        if not too_long and info.channels == 1:
            rows.append((uid, f"{duration:.3f}", path, fmt, ""))
            continue
        # multi-channel or long: write mono pieces (channel 0) beside the CSV
        os.makedirs(pieces_dir, exist_ok=True)
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        mono = np.ascontiguousarray(data[:, 0])
        step = len(mono) if not too_long else int(max_length * sr)
        for j, start in enumerate(range(0, len(mono), step)):
            seg = mono[start : start + step]
            if len(seg) < max(1, int(0.1 * sr)):  # drop a tiny remainder
                continue
            out = os.path.join(pieces_dir, f"{uid}_{j}.wav")
            sf.write(out, seg, sr, subtype="FLOAT")
            rows.append((f"{uid}_{j}", f"{len(seg) / sr:.3f}", out, "wav", ""))
    if not rows:
        raise FileNotFoundError(f"no readable audio file under {folder}; see the warnings above")
    os.makedirs(os.path.dirname(csv_file) or ".", exist_ok=True)
    tmp = csv_file + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(AUGMENT_CSV_HEADER)
        w.writerows(rows)
    os.replace(tmp, csv_file)
    logger.info("wrote %s (%d entries from %s)", csv_file, len(rows), folder)
    return csv_file
