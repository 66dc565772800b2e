"""VoxCeleb (or MiniVox) folders -> SpeechBrain CSVs for self-supervised training and verification.

Reads the VoxCeleb1/2 layout ``<root>/wav/<speaker id>/<video id>/<n>.wav`` from one or several
roots and writes, into ``save_folder``:

* ``train.csv``: every utterance of every speaker that the trial list does **not** name (on either side);
* ``test.csv``: the utterances the trial list names;
* a copy of the trial list, ``skipped_files.txt`` (bad files and why) and ``opt_voxceleb_prepare.json``.

Both CSVs have the header ``ID,duration,wav,start,stop,spk_id`` with one row per utterance, absolute
paths, ``start=0`` and ``stop`` = number of samples. Durations come from the file headers (nothing is
decoded), so a VoxCeleb2 scan takes minutes, not hours. Unlike SpeechBrain's own
``voxceleb_prepare`` there is no utterance-level train/dev split and no chunking: self-supervised
training draws its own random crops (``speechbrain_ssrl.data.views``).

VoxCeleb2 ships AAC (``.m4a``), which libsndfile cannot read: ``convert_m4a=True`` (or
:func:`convert_m4a_to_wav`) converts ``**/aac/<spk>/<video>/<n>.m4a`` to ``<root>/wav/...`` with ffmpeg.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile as sf
from tqdm import tqdm

from speechbrain_ssrl.data.shared_prepare import speechbrain_train_files
from speechbrain_ssrl.data.trials import (
    TrialListError,
    read_trials,
    resolve_trial_paths,
    split_data_folders,
    trial_speakers,
)

__all__ = [
    "CSV_HEADER",
    "OPT_FILE",
    "SKIPPED_FILE",
    "AudioInfo",
    "check_audio",
    "convert_m4a_to_wav",
    "find_wavs",
    "prepare_voxceleb",
    "preparation_options",
    "preparation_is_current",
    "read_trial_list",
]

logger = logging.getLogger(__name__)

CSV_HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id"]
OPT_FILE = "opt_voxceleb_prepare.json"
SKIPPED_FILE = "skipped_files.txt"
_KNOWN_SPLITS = ("train", "test")
_PREP_VERSION = 2  # 2: float-coded files are decoded and checked for NaN / inf


@dataclass(frozen=True)
class AudioInfo:
    """What the header of a good audio file says."""

    frames: int
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _riff_truncation(path: str, file_size: int) -> Optional[str]:
    """Why a RIFF/WAVE file is truncated (its data chunk is longer than the file), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
                return None  # not a plain RIFF wav (RF64, FLAC, ...): trust libsndfile
            fmt = "<I" if head[:4] == b"RIFF" else ">I"
            offset = 12
            for _ in range(256):
                f.seek(offset)
                ch = f.read(8)
                if len(ch) < 8:
                    return None
                size = struct.unpack(fmt, ch[4:8])[0]
                if ch[:4] == b"data":
                    available = file_size - (offset + 8)
                    if size not in (0, 0xFFFFFFFF) and size > available:
                        return (
                            f"truncated: the header declares {size} bytes of audio, the file holds "
                            f"{max(available, 0)}"
                        )
                    return None
                offset += 8 + size + (size & 1)
    except OSError:
        return None
    return None


def check_audio(
    path: str, min_duration: float = 0.0, sample_rate: int = 16000
) -> Tuple[Optional[AudioInfo], Optional[str]]:
    """Reads only the header of ``path``: (info, None) for a good file, (None, reason) for a bad one.

    Bad: empty, unreadable, truncated, not mono, not ``sample_rate``, or shorter than ``min_duration``.
    """
    try:
        size = os.path.getsize(path)
    except OSError as err:
        return None, f"unreadable: {err.strerror or err}"
    if size == 0:
        return None, "empty file (0 bytes)"
    try:
        info = sf.info(path)
    except Exception as err:  # noqa: BLE001 - libsndfile raises RuntimeError/LibsndfileError/...
        return None, f"unreadable: {str(err).strip() or type(err).__name__}"
    if info.frames <= 0:
        return None, "empty: no audio samples"
    if info.samplerate != sample_rate:
        return None, (
            f"sample rate {info.samplerate} Hz, not {sample_rate} Hz (resample it, e.g. ffmpeg -ar {sample_rate})"
        )
    if info.channels != 1:
        return None, f"{info.channels} channels, not mono"
    why = _riff_truncation(path, size)
    if why:
        return None, why
    duration = info.frames / info.samplerate
    if duration < min_duration:
        return None, f"too short: {duration:.2f} s < min_duration {min_duration:g} s"
    why = _nonfinite_float_samples(path, info.subtype)
    if why:
        return None, why
    return AudioInfo(int(info.frames), int(info.samplerate)), None


#: soundfile subtypes that can hold NaN / inf samples (integer PCM cannot)
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


def _nonfinite_float_samples(path: str, subtype: str, block: int = 1 << 18) -> Optional[str]:
    """Why a float-coded file is unusable (a NaN / inf sample, or undecodable data), or None.

    Only float files are decoded (block by block, bounded memory); integer PCM cannot hold NaN.
    """
    if str(subtype).upper() not in _FLOAT_SUBTYPES:
        return None
    try:
        for i, data in enumerate(sf.blocks(path, blocksize=block, dtype="float32", always_2d=True)):
            bad = ~np.isfinite(data)
            if bad.any():
                first = i * block + int(np.argmax(bad.any(axis=1)))
                return f"non-finite samples (NaN or inf), the first at sample {first}"
    except Exception as err:  # noqa: BLE001
        return f"unreadable: {str(err).strip() or type(err).__name__}"
    return None


def _entry_is(entry: os.DirEntry, kind: str, skipped: Optional[List[Tuple[str, str]]]) -> bool:
    """``entry.is_dir()`` / ``is_file()`` following symlinks; a symlink loop or a dangling link is recorded
    in ``skipped`` (path, reason) instead of aborting the scan."""
    try:
        return entry.is_dir(follow_symlinks=True) if kind == "dir" else entry.is_file(follow_symlinks=True)
    except OSError as err:
        if skipped is not None:
            skipped.append((entry.path, f"unreadable: {err.strerror or err} (a symbolic link loop?)"))
        return False


def _sorted_dirs(path: str, skipped: Optional[List[Tuple[str, str]]] = None) -> List[str]:
    with os.scandir(path) as it:
        return sorted(e.name for e in it if _entry_is(e, "dir", skipped))


def find_wavs(
    root: str, skip_speakers: Sequence[str] = (), skipped: Optional[List[Tuple[str, str]]] = None
) -> List[Tuple[str, str]]:
    """(relative path ``spk/video/utt.wav``, absolute path) of every ``<root>/wav/*/*/*.wav``, sorted.

    Entries that cannot be followed (a symbolic link loop, a dangling link) are appended to ``skipped``
    as (path, reason) when a list is given, and left out.
    """
    wav_dir = os.path.join(root, "wav")
    skip = set(skip_speakers)
    out: List[Tuple[str, str]] = []
    for spk in _sorted_dirs(wav_dir, skipped):
        if spk in skip:
            continue
        for video in _sorted_dirs(os.path.join(wav_dir, spk), skipped):
            vdir = os.path.join(wav_dir, spk, video)
            with os.scandir(vdir) as it:
                names = sorted(e.name for e in it if e.name.lower().endswith(".wav") and _entry_is(e, "file", skipped))
            out.extend((f"{spk}/{video}/{n}", os.path.join(vdir, n)) for n in names)
    return out


def _has_wav(folder: str) -> bool:
    """True as soon as one ``.wav`` file is found under ``folder``."""
    for _, _, filenames in os.walk(folder):
        if any(n.lower().endswith(".wav") for n in filenames):
            return True
    return False


def _utt_id(rel: str) -> str:
    """VoxCeleb-style utterance id: ``id10001--1zcIwhmdeo4--00001``."""
    parts = rel.split("/")
    return "--".join(parts[:-1] + [os.path.splitext(parts[-1])[0]])


def _sha1(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_csv(path: str, rows: Sequence[Sequence[object]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        w.writerows(rows)
    os.replace(tmp, path)


def _row(rel: str, path: str, info: AudioInfo) -> List[object]:
    # spk_id is for diagnostics (pseudo-label purity/NMI) only: self-supervised training must never read it.
    return [_utt_id(rel), f"{info.duration:.4f}", path, 0, info.frames, rel.split("/")[0]]


def convert_m4a_to_wav(root: str, jobs: int = 2, sample_rate: int = 16000) -> int:
    """Converts VoxCeleb2's ``**/aac/<spk>/<video>/<n>.m4a`` into ``<root>/wav/<spk>/<video>/<n>.wav``.

    16 kHz mono 16-bit PCM via ffmpeg; files already converted are skipped, so it can be resumed.
    Returns the number of files converted; failures are logged and left out.
    """
    root = os.path.abspath(os.fspath(root))
    if shutil.which("ffmpeg") is None:
        raise RuntimeError(
            "ffmpeg is not installed but is needed to convert VoxCeleb2's m4a files. Fix: "
            "apt-get install ffmpeg (or run tools/install_system_deps.sh)"
        )
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} does not exist: pass the VoxCeleb2 root that holds aac/ (or dev/aac/)")
    todo: List[Tuple[str, str]] = []
    wav_dir = os.path.join(root, "wav")
    for dirpath, dirnames, filenames in os.walk(root):
        if os.path.abspath(dirpath).startswith(wav_dir):
            dirnames[:] = []
            continue
        dirnames.sort()
        for name in sorted(filenames):
            if not name.lower().endswith(".m4a"):
                continue
            src = os.path.join(dirpath, name)
            parts = os.path.relpath(src, root).split(os.sep)
            if len(parts) < 3:
                logger.warning("skipping %s: not under <spk>/<video>/", src)
                continue
            dst = os.path.join(wav_dir, parts[-3], parts[-2], os.path.splitext(parts[-1])[0] + ".wav")
            if not os.path.isfile(dst):
                todo.append((src, dst))
    if not todo:
        return 0

    def _convert(pair: Tuple[str, str]) -> Optional[str]:
        src, dst = pair
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = dst + ".part.wav"
        cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", src, "-ac", "1",
               "-ar", str(sample_rate), "-c:a", "pcm_s16le", tmp]
        res = subprocess.run(cmd, capture_output=True, check=False)
        if res.returncode != 0:
            if os.path.exists(tmp):
                os.remove(tmp)
            return f"{src}: {res.stderr.decode(errors='replace').strip()}"
        os.replace(tmp, dst)
        return None

    failed: List[str] = []
    with ThreadPoolExecutor(max_workers=max(1, int(jobs))) as pool:
        futs = [pool.submit(_convert, p) for p in todo]
        for fut in tqdm(as_completed(futs), total=len(futs), desc="m4a -> wav", unit="file"):
            err = fut.result()
            if err:
                failed.append(err)
    for err in failed:
        logger.warning("ffmpeg could not convert %s", err)
    return len(todo) - len(failed)


def read_trial_list(path: str):
    """``read_trials`` (kept as this module's name for it): a list that is not UTF-8 text is a ``TrialListError``."""
    return read_trials(path)


def _check_roots_exist(roots: List[str]) -> None:
    for root in roots:
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"data folder {root} does not exist. Fix: set data_folder to the VoxCeleb root(s) that hold "
                "wav/<speaker>/<video>/<utt>.wav (comma-separated for VoxCeleb1 + VoxCeleb2), or build "
                "MiniVox with `minivox-build --size demo --out <folder>`"
            )


def _check_roots(roots: List[str]) -> None:
    _check_roots_exist(roots)
    for root in roots:
        if not os.path.isdir(os.path.join(root, "wav")):
            has_m4a = any(f.endswith(".m4a") for _, _, fs in os.walk(root) for f in fs[:50])
            hint = (
                " It holds .m4a files (VoxCeleb2): rerun with convert_m4a=True to convert them to wav with ffmpeg."
                if has_m4a
                else " Pass the folder that contains wav/ (not wav/ itself)."
            )
            raise FileNotFoundError(
                f"{root} has no wav/ folder (expected {root}/wav/<speaker>/<video>/<utt>.wav).{hint}"
            )


def _skip_if_done(save_folder: str, opts: dict, splits: Sequence[str], trial_copy: str) -> bool:
    path = os.path.join(save_folder, OPT_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        return False
    if old != opts:
        return False
    needed = [os.path.join(save_folder, f"{s}.csv") for s in splits] + [trial_copy]
    return all(os.path.isfile(p) for p in needed)


def preparation_options(
    data_folder: Union[str, Sequence[str]],
    verification_pairs_file: str,
    splits: Sequence[str] = ("train", "test"),
    min_duration: float = 1.0,
    convert_m4a: bool = False,
    sample_rate: int = 16000,
    shared_prepare: Optional[str] = None,
) -> Dict[str, object]:
    """The arguments a preparation depends on (saved as ``opt_voxceleb_prepare.json``)."""
    trials_path = os.path.abspath(os.fspath(verification_pairs_file))
    opts: Dict[str, object] = {
        "version": _PREP_VERSION,
        "data_folder": split_data_folders(data_folder),
        "verification_pairs_file": trials_path,
        "trials_sha1": _sha1(trials_path),
        "splits": list(splits),
        "min_duration": float(min_duration),
        "convert_m4a": bool(convert_m4a),
        "sample_rate": int(sample_rate),
    }
    if shared_prepare:  # the training list came from SpeechBrain's shared script (data.shared_prepare)
        path = os.path.abspath(shared_prepare)
        opts["train_list"] = {"speechbrain_prepare": path, "sha1": _sha1(path)}
    return opts


def preparation_is_current(
    data_folder: Union[str, Sequence[str]],
    save_folder: str,
    verification_pairs_file: str,
    splits: Sequence[str] = ("train", "test"),
    min_duration: float = 1.0,
    skip_prep: bool = False,
    convert_m4a: bool = False,
    sample_rate: int = 16000,
    shared_prepare: Optional[str] = None,
    **_: object,
) -> bool:
    """Whether ``prepare_voxceleb`` with these arguments would leave ``save_folder`` as it is (nothing
    to prepare: ``skip_prep``, or the CSVs there were made with the same arguments and trial list).
    Reads only; a missing data folder or trial list counts as not current (the preparation reports it)."""
    if skip_prep:
        return True
    trials_path = os.path.abspath(os.fspath(verification_pairs_file))
    if not os.path.isfile(trials_path):
        return False
    save_folder = os.path.abspath(os.fspath(save_folder))
    opts = preparation_options(data_folder, trials_path, splits, min_duration, convert_m4a, sample_rate, shared_prepare)
    return _skip_if_done(save_folder, opts, splits, os.path.join(save_folder, os.path.basename(trials_path)))


def prepare_voxceleb(
    data_folder: Union[str, Sequence[str]],
    save_folder: str,
    verification_pairs_file: str,
    splits: Sequence[str] = ("train", "test"),
    min_duration: float = 1.0,
    skip_prep: bool = False,
    convert_m4a: bool = False,
    jobs: int = 2,
    sample_rate: int = 16000,
    shared_prepare: Optional[str] = None,
) -> Dict[str, str]:
    """Writes ``train.csv`` / ``test.csv`` (``ID,duration,wav,start,stop,spk_id``) into ``save_folder``.

    Args:
        data_folder: corpus root(s) holding ``wav/<spk>/<video>/<utt>.wav``: a path, a
            comma-separated string of paths, or a list (e.g. VoxCeleb1 and VoxCeleb2).
        save_folder: where the CSVs, the trial-list copy, ``skipped_files.txt`` and
            ``opt_voxceleb_prepare.json`` go (created if needed).
        verification_pairs_file: ``veri_test2.txt``-format trial list (paths relative to ``wav/``).
            Its speakers (both columns) are excluded from ``train.csv``.
        splits: any of ``"train"``, ``"test"``.
        min_duration: training files shorter than this (seconds) are skipped.
        skip_prep: do nothing.
        convert_m4a: first convert VoxCeleb2 ``aac/**/*.m4a`` to ``wav/`` with ffmpeg.
        jobs: ffmpeg processes for the conversion.
        sample_rate: the only sample rate accepted.
        shared_prepare: path of SpeechBrain's shared ``recipes/VoxCeleb/voxceleb_prepare.py``: the training
            files are the rows of the ``train.csv`` it writes (``data.shared_prepare``), then checked and
            filtered as our own listing is, so ``train.csv`` comes out the same. None: our own listing.
    Returns:
        ``{split: csv path}``. Re-running with the same arguments (and trial list) does nothing.
    Raises:
        FileNotFoundError: a missing data folder, ``wav/`` folder or trial list, an empty corpus, or
            a trial list naming files that do not exist.
        ValueError: an unknown split, a malformed trial list, no training speaker left, or bad
            audio files named by the trial list.

    Bad training files (unreadable, truncated, empty, too short, wrong sample rate, not mono, a float
    file with a NaN / inf sample, a symbolic link loop) are skipped, listed with the reason in
    ``save_folder/skipped_files.txt`` and a warning is logged. Training adds to that list the files
    that turn out unusable when read (``speechbrain_ssrl.data.views.BadFileList``).
    """
    save_folder = os.path.abspath(os.fspath(save_folder))
    out = {s: os.path.join(save_folder, f"{s}.csv") for s in splits}
    if skip_prep:
        return out
    bad_splits = [s for s in splits if s not in _KNOWN_SPLITS]
    if bad_splits or not splits:
        raise ValueError(f"unknown split(s) {bad_splits or list(splits)}: choose from {list(_KNOWN_SPLITS)}")
    roots = split_data_folders(data_folder)
    _check_roots_exist(roots)  # before the trial list, which usually lives in the data folder
    trials_path = os.path.abspath(os.fspath(verification_pairs_file))
    if not os.path.isfile(trials_path):
        raise FileNotFoundError(
            f"trial list {trials_path} does not exist. Fix: set verification_pairs_file to VoxCeleb1's "
            "veri_test2.txt (or <minivox root>/veri_test2.txt for MiniVox)"
        )
    trial_copy = os.path.join(save_folder, os.path.basename(trials_path))
    opts = preparation_options(roots, trials_path, splits, min_duration, convert_m4a, sample_rate, shared_prepare)
    if _skip_if_done(save_folder, opts, splits, trial_copy):
        logger.info("VoxCeleb CSVs in %s are up to date, skipping preparation", save_folder)
        return out

    if convert_m4a:
        for root in roots:
            n = convert_m4a_to_wav(root, jobs=jobs, sample_rate=sample_rate)
            logger.info("converted %d m4a files under %s", n, root)
    _check_roots(roots)
    if not any(_has_wav(os.path.join(r, "wav")) for r in roots):
        raise FileNotFoundError(
            f"no wav file found under {', '.join(os.path.join(r, 'wav') for r in roots)} "
            "(expected wav/<speaker>/<video>/<utt>.wav): the corpus is empty. Fix: point data_folder at "
            "the extracted VoxCeleb root, convert VoxCeleb2 with convert_m4a=True, or build MiniVox."
        )
    trials = read_trial_list(trials_path)
    test_spk = trial_speakers(trials)
    resolved = resolve_trial_paths(trials, roots, trials_file=trials_path)
    os.makedirs(save_folder, exist_ok=True)

    skipped: List[Tuple[str, str]] = []
    if "train" in splits:
        if shared_prepare:
            listed = [(rel, path) for rel, path in speechbrain_train_files(shared_prepare, roots, trials_path, save_folder)
                      if rel.split("/")[0] not in test_spk]
            logger.info("training files listed by SpeechBrain's %s", shared_prepare)
        else:
            listed = [f for root in roots for f in find_wavs(root, skip_speakers=sorted(test_spk), skipped=skipped)]
        files: List[Tuple[str, str]] = []
        seen: Dict[str, str] = {}
        for rel, path in listed:
            if rel in seen:
                skipped.append((path, f"duplicate of {seen[rel]} (same relative path in an earlier data folder)"))
                continue
            seen[rel] = path
            files.append((rel, path))
        rows: List[List[object]] = []
        for rel, path in tqdm(files, desc="scanning train wavs", unit="file"):
            info, why = check_audio(path, min_duration, sample_rate)
            if info is None:
                skipped.append((path, why or "bad file"))
            else:
                rows.append(_row(rel, path, info))
        if not rows:
            raise ValueError(
                f"no usable training utterance in {', '.join(roots)}: every speaker is in the trial list "
                f"{trials_path} or every file was skipped (see {os.path.join(save_folder, SKIPPED_FILE)}). "
                "Fix: use a trial list that leaves training speakers, or add a training corpus to data_folder."
            )
        _write_csv(out["train"], rows)
        logger.info("train.csv: %d utterances of %d speakers", len(rows), len({r[5] for r in rows}))

    if "test" in splits:
        rows, bad = [], []
        for rel in tqdm(sorted(resolved), desc="scanning test wavs", unit="file"):
            info, why = check_audio(resolved[rel], 0.0, sample_rate)
            if info is None:
                bad.append(f"{resolved[rel]}: {why}")
            else:
                rows.append(_row(rel, resolved[rel], info))
        if bad:
            shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
            raise ValueError(
                f"{len(bad)} file(s) named by the trial list {trials_path} are unusable:\n  {shown}\n"
                "Fix: re-extract or re-download these files, or remove the trials that name them."
            )
        _write_csv(out["test"], rows)
        logger.info("test.csv: %d utterances of %d speakers", len(rows), len(test_spk))

    skipped_path = os.path.join(save_folder, SKIPPED_FILE)
    with open(skipped_path, "w", encoding="utf-8") as f:
        for path, why in skipped:
            f.write(f"{path}\t{why}\n")
    if skipped:
        listing = "; ".join(f"{os.path.basename(p)}: {w}" for p, w in skipped[:5])
        logger.warning(
            "skipped %d bad audio file(s), listed with the reason in %s (%s%s)",
            len(skipped), skipped_path, listing, "; ..." if len(skipped) > 5 else "",
        )
    if os.path.abspath(trial_copy) != trials_path:
        shutil.copyfile(trials_path, trial_copy)
    with open(os.path.join(save_folder, OPT_FILE), "w", encoding="utf-8") as f:
        json.dump(opts, f, indent=2)
        f.write("\n")
    return out
