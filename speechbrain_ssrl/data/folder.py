"""Any folder of recordings, or a user CSV, -> the recipe's ``train.csv`` (no speaker labels needed).

``prepare_folder(data_folder, save_folder, data_format="folder" | "csv", ...)`` writes into ``save_folder``
the same files as ``prepare_voxceleb`` (``speechbrain_ssrl.data.voxceleb``) writes for training:

* ``train.csv`` with the header ``ID,duration,wav,start,stop,spk_id`` (``start`` / ``stop`` in samples of
  the 16 kHz mono file named by ``wav``; ``spk_id`` empty when no speaker is known);
* ``skipped_files.txt``: ``path<TAB>reason`` of every file left out (the list the training loader's
  checked read, ``speechbrain_ssrl.data.views.BadFileList``, shares);
* ``conversions.tsv``: ``source<TAB>converted wav<TAB>what was converted`` (also summarised in the log);
* ``preparation_log.txt``: the summary lines it logged (found, converted, skipped, kept), which ``train.py``
  logs again once the run's log is open;
* ``opt_folder_prepare.json``: the options, which make a second call with the same ones do nothing.

Inputs:

* ``data_format="folder"``: every audio file (``AUDIO_EXTENSIONS``) under ``data_folder``, in any layout
  (hidden folders, ``exclude`` and symbolic-link loops are not entered; other files are ignored and counted);
* ``data_format="csv"``: ``data_folder`` is a CSV with the columns ``ID,wav`` and optionally ``start,stop``
  (seconds; empty = the whole file) and ``spk_id`` (or ``speaker``): a speaker column is carried to the
  segments, for diagnostics only. Relative ``wav`` paths are relative to the CSV's folder.

Audio: a 16 kHz (``sample_rate``) mono WAV / FLAC / AIFF file is used where it is. Any other file (another
rate or channel count, MP3, Ogg, M4A/AAC, anything ffmpeg decodes, a truncated WAV) is converted once with
ffmpeg to 16-bit 16 kHz mono WAV in ``cache_folder`` (named after the source's path, size and time stamp, so
a changed source is converted again) and each conversion is listed in ``conversions.tsv``.

Segments: long recordings are cut into training segments by an energy detector (:class:`SegmentConfig`):
20 ms frame energies are computed block by block (``soundfile`` blocks: memory does not grow with the
file's length beyond 4 bytes per frame), a frame is speech above a per-recording threshold (the larger of
an absolute floor and the lower of "noise floor + margin" and "loud level - range"), pauses shorter than
``min_silence`` stay inside a segment, longer ones are skipped, and a speech region longer than
``max_seconds`` is cut at its quietest moments into segments of ``min_seconds``..``max_seconds``; regions
shorter than ``min_seconds`` are dropped. ``segment=False``
keeps one row per file (or CSV row) instead.

Work is done in ``jobs`` worker processes (chunks of files); every finished file is appended to a
journal in ``cache_folder`` (``segments_<settings>.jsonl``), so an interrupted or repeated preparation
redoes nothing that is done (the DINO and SSRL stages share it). A folder (or CSV) with no usable audio is
refused with one line naming it and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
from tqdm import tqdm

from speechbrain_ssrl.data.voxceleb import CSV_HEADER, SKIPPED_FILE, _riff_truncation, _sha1

__all__ = [
    "AUDIO_EXTENSIONS",
    "DATA_FORMATS",
    "OPT_FILE",
    "CONVERSIONS_FILE",
    "LOG_FILE",
    "SegmentConfig",
    "NoUsableAudioError",
    "find_audio_files",
    "read_user_csv",
    "frame_energies",
    "speech_segments",
    "segment_file",
    "default_cache_folder",
    "folder_preparation_options",
    "folder_preparation_is_current",
    "prepare_folder",
]

logger = logging.getLogger(__name__)

DATA_FORMATS = ("voxceleb", "folder", "csv")
OPT_FILE = "opt_folder_prepare.json"
CONVERSIONS_FILE = "conversions.tsv"
#: the preparation's summary (what was found, converted, skipped, kept), also logged
LOG_FILE = "preparation_log.txt"
#: file extensions taken as audio in a folder (anything else is ignored, and counted in the log)
AUDIO_EXTENSIONS = (
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".wma",
    ".aif", ".aiff", ".aifc", ".au", ".caf", ".w64", ".webm",
)
#: soundfile formats read where they are (lossless, exact seeks); other formats are converted
IN_PLACE_FORMATS = ("WAV", "WAVEX", "FLAC", "RF64", "W64", "AIFF")
_PREP_VERSION = 2  # 2: long regions cut at quiet moments (journals of version 1 are not reused)


class NoUsableAudioError(ValueError):
    """The folder or CSV holds no usable audio (the message names it and the fix)."""


# ---------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SegmentConfig:
    """The energy segmenter's settings (seconds and dB; energies in dB relative to full scale).

    A 20 ms frame is speech when its energy exceeds
    ``max(floor_db, min(p10 + noise_margin_db, p95 - range_db))``, with p10 / p95 the recording's 10th and
    95th percentile frame energies (its noise floor and its loud level).
    """

    min_seconds: float = 2.0  #: shorter speech regions (and remainders) are dropped
    max_seconds: float = 12.0  #: longer regions are cut, at their quietest moments, into segments of at most this length
    min_silence: float = 0.3  #: pauses at least this long end a segment (shorter ones stay inside)
    floor_db: float = -55.0  #: frames below this are always silence (digital silence, hum)
    noise_margin_db: float = 10.0  #: speech is this much above the noise floor ...
    range_db: float = 25.0  #: ... or at most this much below the loud level, whichever is lower
    frame_seconds: float = 0.02
    segment: bool = True  #: False: one row per file / CSV row (no silence removal, no cutting)

    def check(self) -> "SegmentConfig":
        """Refuses settings that cannot segment (one line naming the key and the fix)."""
        if not self.min_seconds > 0:
            raise ValueError(f"segment_min_seconds={self.min_seconds}: must be > 0 (e.g. 2.0)")
        if self.segment and not self.max_seconds >= self.min_seconds:
            raise ValueError(
                f"segment_max_seconds={self.max_seconds} is below segment_min_seconds={self.min_seconds}: "
                "no segment could be kept. Fix: pass a maximum >= the minimum (e.g. 2 and 12)"
            )
        if not (0 < self.frame_seconds <= 0.1) or self.min_silence < 0:
            raise ValueError(f"frame_seconds={self.frame_seconds} / min_silence={self.min_silence}: out of range")
        return self

    def digest(self, sample_rate: int) -> str:
        text = json.dumps({"v": _PREP_VERSION, "sr": int(sample_rate), **asdict(self)}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def default_cache_folder(data_folder: str) -> str:
    """Where converted audio and the segment journal go by default: ``$SSRL_CACHE`` (else
    ``$XDG_CACHE_HOME/speechbrain_ssrl``, else ``~/.cache/speechbrain_ssrl``) ``/prepared/<data folder digest>``."""
    base = os.environ.get("SSRL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "speechbrain_ssrl"
    )
    key = hashlib.sha1(os.path.abspath(os.fspath(data_folder)).encode("utf-8")).hexdigest()[:12]
    return os.path.join(base, "prepared", key)


# ---------------------------------------------------------------------------------------- inputs
def find_audio_files(
    folder: str, exclude: Sequence[str] = (), skipped: Optional[List[Tuple[str, str]]] = None, progress: bool = False
) -> Tuple[List[str], Counter]:
    """(absolute paths of the audio files under ``folder``, sorted; Counter of the other files' extensions).

    Hidden entries (a name starting with ``.``) and the folders in ``exclude`` are not entered; a folder
    reached twice through symbolic links (a loop) or a dangling link is appended to ``skipped``.
    ``progress``: a progress bar of the folders scanned (a large tree on a network disk takes minutes).
    """
    excl = {os.path.realpath(e) for e in exclude if e}
    seen_dirs = set()
    found: List[str] = []
    other: Counter = Counter()
    stack = [os.path.abspath(folder)]
    bar = tqdm(desc=f"scanning {os.path.basename(os.path.abspath(folder)) or folder}", unit="folder", disable=not progress,
               mininterval=1.0)
    while stack:
        d = stack.pop()
        bar.update(1)
        try:
            st = os.stat(d)
        except OSError as e:
            if skipped is not None:
                skipped.append((d, f"unreadable: {e.strerror or e}"))
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            if skipped is not None:
                skipped.append((d, "folder reached twice (a symbolic link loop?), entered once"))
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            if skipped is not None:
                skipped.append((d, f"unreadable folder: {e.strerror or e}"))
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=True)
                is_file = not is_dir and e.is_file(follow_symlinks=True)
            except OSError as err:
                if skipped is not None:
                    skipped.append((e.path, f"unreadable: {err.strerror or err} (a symbolic link loop?)"))
                continue
            if is_dir:
                if os.path.realpath(e.path) not in excl:
                    subdirs.append(e.path)
            elif is_file:
                ext = os.path.splitext(e.name)[1].lower()
                if ext in AUDIO_EXTENSIONS:
                    found.append(e.path)
                else:
                    other[ext or "(no extension)"] += 1
            elif skipped is not None and e.is_symlink():
                skipped.append((e.path, "dangling symbolic link"))
        stack.extend(reversed(subdirs))
        bar.set_postfix(audio_files=len(found), refresh=False)
    bar.close()
    return sorted(found), other


@dataclass(frozen=True)
class SourceRow:
    """One input row: a recording (``path``), a range of it in seconds (``stop`` None = to the end), the
    row's id and speaker (empty when unknown)."""

    uid: str
    path: str
    start: float = 0.0
    stop: Optional[float] = None
    spk: str = ""


def _seconds(value: str, where: str, column: str) -> Optional[float]:
    value = (value or "").strip()
    if not value:
        return None
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{where}: {column}={value!r} is not a number of seconds >= 0. Fix that row (empty = whole file)")
    return x


def read_user_csv(csv_path: str) -> List[SourceRow]:
    """The rows of a user CSV ``ID,wav[,start,stop][,spk_id|speaker]`` (start/stop in seconds).

    Relative ``wav`` paths are taken relative to the CSV's folder. A missing column, a duplicate ID, a
    malformed number or ``stop <= start`` is refused, naming the file and line.
    """
    csv_path = os.path.abspath(os.fspath(csv_path))
    base = os.path.dirname(csv_path)
    try:
        f = open(csv_path, newline="", encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(
            f"CSV {csv_path}: {e.strerror or e}. Fix: with data_format: csv, data_folder is a CSV file with the "
            "columns ID,wav[,start,stop][,spk_id]"
        ) from None
    with f:
        try:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = cols
            lines = list(reader)
        except (UnicodeDecodeError, csv.Error) as e:
            raise ValueError(f"CSV {csv_path} is not a UTF-8 CSV ({e}). Fix: pass a CSV with the columns ID,wav[,start,stop]") from None
    missing = [c for c in ("ID", "wav") if c not in cols]
    if missing:
        raise ValueError(
            f"CSV {csv_path} lacks the column(s) {missing} (its header: {','.join(cols) or 'none'}). Fix: a header "
            "line ID,wav[,start,stop][,spk_id] (start/stop in seconds, optional)"
        )
    spk_col = next((c for c in ("spk_id", "speaker") if c in cols), None)
    rows: List[SourceRow] = []
    seen: Dict[str, int] = {}
    for lineno, r in enumerate(lines, start=2):
        where = f"{csv_path}, line {lineno}"
        uid, wav = (r.get("ID") or "").strip(), (r.get("wav") or "").strip()
        if not uid or not wav:
            raise ValueError(f"{where}: empty ID or wav. Fix or remove that line")
        if uid in seen:
            raise ValueError(f"{where}: ID {uid!r} is used on line {seen[uid]} too. Fix: make the IDs unique")
        seen[uid] = lineno
        start = _seconds(r.get("start", ""), where, "start") or 0.0
        stop = _seconds(r.get("stop", ""), where, "stop")
        if stop is not None and stop <= start:
            raise ValueError(f"{where}: stop={stop:g} s is not after start={start:g} s. Fix that row")
        path = os.path.expanduser(wav)
        path = path if os.path.isabs(path) else os.path.join(base, path)
        rows.append(SourceRow(uid, os.path.normpath(path), start, stop, ((r.get(spk_col) or "").strip() if spk_col else "")))
    if not rows:
        raise NoUsableAudioError(f"CSV {csv_path} has no row. Fix: list the recordings as ID,wav[,start,stop] rows under the header")
    return rows


# ---------------------------------------------------------------------------------------- segmentation
def frame_energies(
    path: str, frame: int, start: int = 0, stop: Optional[int] = None, block_frames: int = 2000
) -> Tuple[np.ndarray, int]:
    """(energy in dB of each ``frame``-sample frame of samples [start, stop) of ``path``, samples read).

    Streams ``block_frames`` frames at a time (channels averaged): memory is one block plus 4 bytes per
    frame. Raises ValueError for a non-finite sample (naming its position) or a file that does not decode.
    """
    out: List[np.ndarray] = []
    n = 0
    block = int(frame) * int(block_frames)
    with sf.SoundFile(path) as f:
        total = f.frames if stop is None else min(int(stop), f.frames)
        if start:
            f.seek(int(start))
        remaining = total - int(start)
        while remaining > 0:
            data = f.read(min(block, remaining), dtype="float32", always_2d=True)
            if data.shape[0] == 0:
                break  # the header over-states the length
            x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
            if not np.isfinite(x).all():
                first = int(start) + n + int(np.argmax(~np.isfinite(x)))
                raise ValueError(f"non-finite samples (NaN or inf), the first at sample {first}")
            full = (len(x) // frame) * frame
            parts = [np.mean(np.square(x[:full].reshape(-1, frame), dtype=np.float64), axis=1)]
            if full < len(x):
                parts.append(np.array([np.mean(np.square(x[full:], dtype=np.float64))]))
            out.append((10.0 * np.log10(np.concatenate(parts) + 1e-12)).astype(np.float32))
            n += len(x)
            remaining -= len(x)
    return (np.concatenate(out) if out else np.zeros(0, np.float32)), n


def _runs(mask: np.ndarray) -> List[Tuple[int, int]]:
    """[start, stop) of every run of True in ``mask``."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def speech_threshold(energies: np.ndarray, cfg: SegmentConfig) -> float:
    """The recording's speech threshold in dB (see :class:`SegmentConfig`)."""
    p10, p95 = np.percentile(energies, [10, 95])
    return float(max(cfg.floor_db, min(p10 + cfg.noise_margin_db, p95 - cfg.range_db)))


def _quiet_cuts(smooth: np.ndarray, a: int, b: int, lo: int, hi: int) -> Optional[List[int]]:
    """Frame boundaries that cut frames [a, b) into pieces of ``lo``..``hi`` frames, each cut at a quiet frame
    (within 1 dB of the quietest frame where a cut keeps both sides within the bounds; of those, the one
    nearest to an equal split), or None when no cut can keep both sides within the bounds."""
    cuts, p = [a], a
    while b - p > hi:
        first, last = p + lo, min(p + hi, b - lo)
        if first > last:
            return None
        target = p + (b - p) / math.ceil((b - p) / hi)
        window = smooth[first : last + 1]
        quiet = first + np.flatnonzero(window <= window.min() + 1.0)
        p = int(quiet[np.argmin(np.abs(quiet - target))])
        cuts.append(p)
    cuts.append(b)
    return cuts


def speech_segments(energies: np.ndarray, frame: int, n_samples: int, sample_rate: int, cfg: SegmentConfig) -> List[Tuple[int, int]]:
    """Segments [start, stop) in samples (relative to the first frame) from frame energies.

    Speech frames (above ``speech_threshold``) with pauses shorter than ``min_silence`` filled form
    regions; a region longer than ``max_seconds`` is cut at its quietest moments (a short pause, most
    likely where a turn changes; ``_quiet_cuts``) into pieces of ``min_seconds``..``max_seconds`` (when no
    cut can keep both sides within the bounds: pieces of ``max_seconds``, the remainder kept if long
    enough); regions shorter than ``min_seconds`` are dropped.
    """
    if len(energies) == 0:
        return []
    speech = energies > speech_threshold(energies, cfg)
    gap = int(round(cfg.min_silence * sample_rate / frame))
    for a, b in _runs(~speech):  # short pauses between speech stay inside the region
        if 0 < a and b < len(speech) and b - a < gap:
            speech[a:b] = True
    lo, hi = int(round(cfg.min_seconds * sample_rate)), int(round(cfg.max_seconds * sample_rate))
    lo_f, hi_f = math.ceil(lo / frame), hi // frame
    smooth = np.convolve(energies, np.ones(5) / 5, mode="same")  # 100 ms at 20 ms frames
    out: List[Tuple[int, int]] = []
    for a, b in _runs(speech):
        s, e = a * frame, min(b * frame, n_samples)
        if e - s < lo:
            continue
        cuts = _quiet_cuts(smooth, a, b, lo_f, hi_f) if hi_f >= lo_f else None
        if cuts is not None:
            pieces = [(c0 * frame, min(c1 * frame, n_samples)) for c0, c1 in zip(cuts[:-1], cuts[1:])]
            out.extend((p0, p1) for p0, p1 in pieces if lo <= p1 - p0 <= hi)
        else:  # max_seconds pieces, the remainder kept if long enough
            out.extend((p, min(p + hi, e)) for p in range(s, e, hi) if min(p + hi, e) - p >= lo)
    return out


def segment_file(
    path: str, sample_rate: int, cfg: SegmentConfig, start: int = 0, stop: Optional[int] = None
) -> Tuple[List[Tuple[int, int]], int, float]:
    """(segments [start, stop) in samples of the file, samples in the range, threshold dB) of a
    ``sample_rate`` file's range [start, stop); bounded memory (``frame_energies``)."""
    frame = max(1, int(round(cfg.frame_seconds * sample_rate)))
    energies, n = frame_energies(path, frame, start, stop)
    if n == 0:
        return [], 0, float("nan")
    if not cfg.segment:
        return [(start, start + n)], n, float("nan")
    segs = speech_segments(energies, frame, n, sample_rate, cfg)
    return [(start + a, start + b) for a, b in segs], n, speech_threshold(energies, cfg)


# ---------------------------------------------------------------------------------------- one file
def _source_key(path: str) -> Tuple[str, int, int]:
    st = os.stat(path)
    return path, int(st.st_size), int(st.st_mtime_ns)


def _why_convert(path: str, sample_rate: int) -> Tuple[Optional[str], Optional[str]]:
    """(why the file must be converted, or None; soundfile's error when soundfile cannot read it)."""
    try:
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types
        ext = os.path.splitext(path)[1].lstrip(".").lower() or "file"
        return f"{ext} (not readable by soundfile)", str(e).strip() or type(e).__name__
    what = []
    if info.format not in IN_PLACE_FORMATS:
        what.append(info.format.lower())
    if int(info.samplerate) != int(sample_rate):
        what.append(f"{info.samplerate} Hz")
    if int(info.channels) != 1:
        what.append(f"{info.channels} channels")
    if not what and info.format in ("WAV", "WAVEX"):
        trunc = _riff_truncation(path, os.path.getsize(path))
        if trunc:
            what.append(f"wav header {trunc.split(':')[0]}")
    if not what and info.frames <= 0:
        return None, None  # an empty file: the segmenter names it
    return (", ".join(what) or None), None


def _convert(path: str, dst: str, sample_rate: int) -> Optional[str]:
    """ffmpeg ``path`` -> 16-bit ``sample_rate`` mono wav ``dst`` (written atomically); the error or None."""
    if shutil.which("ffmpeg") is None:
        return "needs conversion but ffmpeg is not installed. Fix: apt-get install ffmpeg (tools/install_system_deps.sh)"
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.part{os.getpid()}.wav"
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", path, "-map", "0:a:0",
           "-vn", "-ac", "1", "-ar", str(int(sample_rate)), "-c:a", "pcm_s16le", "-f", "wav", tmp]
    res = subprocess.run(cmd, capture_output=True, check=False)
    if res.returncode != 0 or not os.path.isfile(tmp):
        if os.path.exists(tmp):
            os.remove(tmp)
        err = res.stderr.decode(errors="replace").strip().splitlines()
        return f"ffmpeg could not decode it ({err[-1] if err else f'exit status {res.returncode}'})"
    os.replace(tmp, dst)
    return None


def _converted_path(cache_folder: str, key: Tuple[str, int, int]) -> str:
    h = hashlib.sha1(repr(key).encode("utf-8")).hexdigest()
    stem = os.path.splitext(os.path.basename(key[0]))[0][:60]
    return os.path.join(cache_folder, "wav16k", h[:2], f"{stem}-{h[:16]}.wav")


def _process_source(task: dict) -> dict:
    """Converts (when needed) and segments one recording: its journal record (never raises for a bad file)."""
    path, sr = task["path"], int(task["sample_rate"])
    cfg = SegmentConfig(**task["cfg"])
    rec = {"key": task["key"], "path": path, "wav": path, "converted": None, "ranges": [], "error": None}
    try:
        if os.path.getsize(path) == 0:
            rec["error"] = "empty file (0 bytes)"
            return rec
        why, sf_error = _why_convert(path, sr)
        if why:
            dst = _converted_path(task["cache_folder"], tuple(task["key"][:3]))  # path, size, time: not the ranges
            if not os.path.isfile(dst):
                err = _convert(path, dst, sr)
                if err:
                    rec["error"] = f"{err}" + (f"; soundfile: {sf_error}" if sf_error and "ffmpeg is not" not in err else "")
                    return rec
            rec["wav"], rec["converted"] = dst, why
        info = sf.info(rec["wav"])
        if int(info.samplerate) != sr:  # a cache file of another rate: never expected, refuse to use it
            rec["error"] = f"{rec['wav']} is {info.samplerate} Hz, not {sr} Hz (delete the cache folder)"
            return rec
        total = 0
        for a_s, b_s in task["ranges"]:
            a = int(round(a_s * sr))
            b = None if b_s is None else int(round(b_s * sr))
            if a >= info.frames:
                rec["ranges"].append({"segments": [], "samples": 0, "note": "starts after the end of the file"})
                continue
            segs, n, thr = segment_file(rec["wav"], sr, cfg, a, b)
            total += n
            rec["ranges"].append({"segments": segs, "samples": n, "threshold_db": None if math.isnan(thr) else round(thr, 1)})
        if total == 0:
            rec["error"] = "no audio samples (a header only)"
    except Exception as e:  # noqa: BLE001 - any problem of one file: listed, the preparation goes on
        rec["error"] = f"unreadable: {str(e).strip() or type(e).__name__}"
    return rec


def _process_chunk(tasks: List[dict]) -> List[dict]:
    return [_process_source(t) for t in tasks]


# ---------------------------------------------------------------------------------------- journal
def _read_journal(path: str) -> Dict[str, dict]:
    """Records of a journal (the last one of a key wins); a torn last line (a kill) is ignored."""
    out: Dict[str, dict] = {}
    if not os.path.isfile(path):
        return out
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
                out[json.dumps(rec["key"])] = rec
            except (ValueError, KeyError, TypeError):
                continue
    return out


def _run_tasks(tasks: List[dict], jobs: int, journal: str, progress: bool) -> Iterator[dict]:
    """Records of ``tasks`` (in completion order), each appended to ``journal`` as soon as it is done."""
    os.makedirs(os.path.dirname(journal), exist_ok=True)
    jobs = max(1, int(jobs))
    bar = tqdm(total=len(tasks), desc="preparing audio", unit="file", disable=not progress, mininterval=1.0)
    with open(journal, "a", encoding="utf-8") as jf:
        def emit(recs: List[dict]) -> Iterator[dict]:
            jf.write("".join(json.dumps(r) + "\n" for r in recs))
            jf.flush()
            bar.update(len(recs))
            yield from recs

        if jobs == 1 or len(tasks) < 2:
            for t in tasks:
                yield from emit([_process_source(t)])
        else:
            import multiprocessing as mp

            size = max(1, min(256, len(tasks) // (jobs * 8)))
            chunks = (tasks[i : i + size] for i in range(0, len(tasks), size))
            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
                pending = set()
                for chunk in chunks:
                    pending.add(pool.submit(_process_chunk, chunk))
                    if len(pending) >= 4 * jobs:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            yield from emit(fut.result())
                for fut in pending:
                    yield from emit(fut.result())
    bar.close()


# ---------------------------------------------------------------------------------------- preparation
def _id_of(rel: str) -> str:
    return rel.replace(os.sep, "/").replace("/", "--")


def folder_preparation_options(
    data_folder: str,
    data_format: str = "folder",
    sample_rate: int = 16000,
    cfg: Optional[SegmentConfig] = None,
    cache_folder: Optional[str] = None,
    exclude: Sequence[str] = (),
) -> Dict[str, object]:
    """The arguments a preparation depends on (saved as ``opt_folder_prepare.json``)."""
    data_folder = os.path.abspath(os.path.expanduser(os.fspath(data_folder)))
    cfg = cfg or SegmentConfig()
    opts: Dict[str, object] = {
        "version": _PREP_VERSION,
        "data_format": data_format,
        "data_folder": data_folder,
        "sample_rate": int(sample_rate),
        "segments": asdict(cfg),
        "cache_folder": os.path.abspath(cache_folder or default_cache_folder(data_folder)),
        "exclude": sorted(os.path.abspath(e) for e in exclude if e),
    }
    if data_format == "csv" and os.path.isfile(data_folder):
        opts["csv_sha1"] = _sha1(data_folder)
    return opts


def folder_preparation_is_current(data_folder: str, save_folder: str, skip_prep: bool = False, **kwargs) -> bool:
    """Whether ``prepare_folder`` with these arguments would leave ``save_folder`` as it is (reads only)."""
    if skip_prep:
        return True
    try:
        with open(os.path.join(os.fspath(save_folder), OPT_FILE), encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        return False
    kw = {k: kwargs[k] for k in ("data_format", "sample_rate", "cfg", "cache_folder", "exclude") if k in kwargs}
    return old == folder_preparation_options(data_folder, **kw) and os.path.isfile(os.path.join(save_folder, "train.csv"))


def _sources(data_folder: str, data_format: str, exclude: Sequence[str], skipped: List[Tuple[str, str]], progress: bool = False):
    """(rows grouped by recording {path: [SourceRow]}, a description of what was found)."""
    if data_format == "csv":
        if not os.path.isfile(data_folder):
            raise FileNotFoundError(
                f"CSV {data_folder} does not exist. Fix: with data_format: csv pass --data_folder=<your CSV of ID,wav[,start,stop]>"
            )
        rows = read_user_csv(data_folder)
        groups: Dict[str, List[SourceRow]] = {}
        for r in rows:
            groups.setdefault(r.path, []).append(r)
        return groups, f"{len(rows)} rows naming {len(groups)} recordings"
    if not os.path.isdir(data_folder):
        hint = " (it is a file: for a CSV pass data_format: csv)" if os.path.isfile(data_folder) else ""
        raise FileNotFoundError(
            f"data folder {data_folder} does not exist{hint}. Fix: pass --data_folder=<the folder that holds your recordings>"
        )
    files, other = find_audio_files(data_folder, exclude, skipped, progress)
    if not files:
        others = ", ".join(f"{n} {e}" for e, n in other.most_common(5))
        raise NoUsableAudioError(
            f"no audio file in {data_folder} (looked for {' '.join(AUDIO_EXTENSIONS)} in every subfolder"
            + (f"; found only other files: {others}" if others else "; it is empty")
            + "). Fix: point data_folder at the folder that holds your recordings, or use data_format: csv"
        )
    if other:
        logger.info("%s: %d non-audio file(s) ignored (%s)", data_folder, sum(other.values()),
                    ", ".join(f"{n} {e}" for e, n in other.most_common(5)))
    groups = {p: [SourceRow(_id_of(os.path.relpath(p, data_folder)), p)] for p in files}
    return groups, f"{len(files)} audio files"


def prepare_folder(
    data_folder: str,
    save_folder: str,
    data_format: str = "folder",
    sample_rate: int = 16000,
    cfg: Optional[SegmentConfig] = None,
    cache_folder: Optional[str] = None,
    exclude: Sequence[str] = (),
    jobs: Optional[int] = None,
    skip_prep: bool = False,
    progress: bool = True,
) -> Dict[str, str]:
    """Writes ``train.csv`` (``ID,duration,wav,start,stop,spk_id``) of a folder of recordings or a user CSV.

    Args:
        data_folder: the folder (``data_format="folder"``) or the CSV file (``data_format="csv"``).
        save_folder: where ``train.csv``, ``skipped_files.txt``, ``conversions.tsv`` and the options go.
        sample_rate: the rate of the training audio (other rates are converted).
        cfg: the segmenter's settings (default :class:`SegmentConfig`: 2-12 s segments).
        cache_folder: converted audio and the journal of finished files (default ``default_cache_folder``).
        exclude: folders under ``data_folder`` not to scan (e.g. the output, noise and RIR folders).
        jobs: worker processes (default: the CPUs this process may use).
        skip_prep: do nothing.
    Returns:
        ``{"train": path of train.csv}``.
    Raises:
        NoUsableAudioError (a ValueError): no audio file, or no usable segment, in ``data_folder``.
        FileNotFoundError / ValueError: a missing folder or CSV, a malformed CSV or setting.
    """
    save_folder = os.path.abspath(os.fspath(save_folder))
    out = {"train": os.path.join(save_folder, "train.csv")}
    if skip_prep:
        return out
    if data_format not in ("folder", "csv"):
        raise ValueError(f"data_format={data_format!r}: prepare_folder reads 'folder' or 'csv' (voxceleb: prepare_voxceleb)")
    cfg = (cfg or SegmentConfig()).check()
    data_folder = os.path.abspath(os.path.expanduser(os.fspath(data_folder)))
    cache_folder = os.path.abspath(cache_folder or default_cache_folder(data_folder))
    exclude = [os.path.abspath(e) for e in exclude if e] + [cache_folder, save_folder]
    opts = folder_preparation_options(data_folder, data_format, sample_rate, cfg, cache_folder, exclude[:-2])
    if folder_preparation_is_current(data_folder, save_folder, data_format=data_format, sample_rate=sample_rate,
                                     cfg=cfg, cache_folder=cache_folder, exclude=exclude[:-2]):
        logger.info("%s is up to date, skipping preparation", out["train"])
        return out
    t0 = time.time()
    skipped: List[Tuple[str, str]] = []
    groups, found = _sources(data_folder, data_format, exclude, skipped, progress)

    journal = os.path.join(cache_folder, f"segments_{cfg.digest(sample_rate)}.jsonl")
    done = _read_journal(journal)
    records: Dict[str, dict] = {}
    tasks = []
    for path, rows in groups.items():
        try:
            key = list(_source_key(path))
        except OSError as e:
            skipped.append((path, f"unreadable: {e.strerror or e}"))
            continue
        ranges = [[r.start, r.stop] for r in rows]
        key.append(ranges)
        k = json.dumps(key)
        if k in done:
            records[path] = done[k]
        else:
            tasks.append({"key": key, "path": path, "ranges": ranges, "sample_rate": int(sample_rate),
                          "cfg": asdict(cfg), "cache_folder": cache_folder})
    if jobs is None:
        try:
            jobs = len(os.sched_getaffinity(0))
        except AttributeError:
            jobs = os.cpu_count() or 1
    logger.info(
        "%s %s: %s; %d already prepared (journal %s), %d to prepare with %d worker process(es); converted audio in %s",
        data_format, data_folder, found, len(records), journal, len(tasks), min(jobs, max(len(tasks), 1)), cache_folder,
    )
    for rec in _run_tasks(tasks, min(jobs, max(len(tasks), 1)), journal, progress):
        records[rec["path"]] = rec

    rows_out: List[List[object]] = []
    conversions: List[Tuple[str, str, str]] = []
    no_segment = 0
    total_samples = kept_samples = 0
    for path in sorted(groups):
        rec = records.get(path)
        if rec is None:
            continue  # listed in skipped already (stat failed)
        if rec.get("error"):
            skipped.append((path, rec["error"]))
            continue
        if rec.get("converted"):
            conversions.append((path, rec["wav"], rec["converted"]))
        n_before = len(rows_out)
        for src, rng in zip(groups[path], rec["ranges"]):
            total_samples += rng["samples"]
            segs = rng["segments"]
            for k, (a, b) in enumerate(segs):
                uid = src.uid if (len(segs) == 1 and not cfg.segment) else f"{src.uid}--{k:05d}"
                rows_out.append([uid, f"{(b - a) / sample_rate:.4f}", rec["wav"], int(a), int(b), src.spk])
                kept_samples += b - a
        if len(rows_out) == n_before:
            no_segment += 1
            skipped.append((path, f"no speech segment of at least {cfg.min_seconds:g} s (silence, or too short)"))

    if not rows_out:
        reasons = Counter(why.split(" (")[0].split(":")[0] for _, why in skipped)
        shown = "; ".join(f"{n} x {w}" for w, n in reasons.most_common(3))
        example = f" e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise NoUsableAudioError(
            f"no usable audio in {data_folder}: {found}, none gave a training segment ({shown};{example}). Fix: "
            f"point data_folder at readable recordings (install ffmpeg for mp3/m4a), or lower segment_min_seconds "
            f"(now {cfg.min_seconds:g} s) for short files"
        )
    os.makedirs(save_folder, exist_ok=True)
    tmp = out["train"] + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        w.writerows(rows_out)
    os.replace(tmp, out["train"])
    with open(os.path.join(save_folder, SKIPPED_FILE), "w", encoding="utf-8") as f:
        f.writelines(f"{p}\t{why}\n" for p, why in skipped)
    with open(os.path.join(save_folder, CONVERSIONS_FILE), "w", encoding="utf-8") as f:
        f.write("source\tconverted\twhat\n")
        f.writelines(f"{s}\t{d}\t{w} -> {sample_rate} Hz mono 16-bit wav (ffmpeg)\n" for s, d, w in conversions)
    summary = [f"{data_format} {data_folder}: {found}"]
    if conversions:
        kinds = Counter(w for _, _, w in conversions)
        summary.append(
            f"{len(conversions)} file(s) converted to {sample_rate} Hz mono wav with ffmpeg "
            f"({', '.join(f'{n} x {k}' for k, n in kinds.most_common(6))}), in {cache_folder}; listed in "
            f"{os.path.join(save_folder, CONVERSIONS_FILE)}"
        )
    if skipped:
        shown = "; ".join(f"{os.path.basename(p)}: {w}" for p, w in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        summary.append(f"skipped {len(skipped)} file(s), listed with the reason in {os.path.join(save_folder, SKIPPED_FILE)} ({shown})")
    speakers = {r[5] for r in rows_out if r[5]}
    summary.append(
        f"train.csv: {len(rows_out)} segments ({kept_samples / sample_rate / 3600:.2f} h of "
        f"{total_samples / sample_rate / 3600:.2f} h read; "
        f"{f'{len(speakers)} speakers given' if speakers else 'no speaker labels'}), {no_segment} file(s) without a "
        f"segment, in {time.time() - t0:.1f} s"
    )
    for line in summary:
        logger.log(logging.WARNING if line.startswith("skipped") else logging.INFO, "%s", line)
    with open(os.path.join(save_folder, LOG_FILE), "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in summary)
    with open(os.path.join(save_folder, OPT_FILE), "w", encoding="utf-8") as f:
        json.dump(opts, f, indent=2)
        f.write("\n")
    return out
