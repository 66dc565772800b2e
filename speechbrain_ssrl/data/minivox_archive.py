"""An "unlabelled archive" made from a MiniVox corpus: the worked example of training on your own recordings.

``build_archive(minivox_folder, out_folder)`` turns MiniVox's *training* utterances into what a team with
recordings and no speaker labels holds: long recordings (one or two minutes to a few minutes each) in an
arbitrary folder layout, in mixed formats, sample rates and channel counts, with pauses between the
utterances and, in some recordings, two speakers talking in turns. It writes

* ``<out>/recordings/<collection>/<episode>.<ext>``: the audio (names reveal no speaker). Formats, drawn per
  recording: FLAC 44.1 kHz stereo, MP3 22.05 kHz mono, WAV 8 kHz mono, WAV 16 kHz mono;
* ``<out>/noise/``, ``<out>/rir/``: MiniVox's augmentation folders, copied (the recipe's defaults find them;
  the folder preparation does not scan them);
* ``<out>/truth/turns.csv``: who speaks when (``recording,start,stop,spk_id,source``; seconds; ``recording``
  relative to ``<out>``). Training never reads it (a CSV is not audio, so the folder scan skips it); it is
  for ``count_crossing_segments`` and for reading the results only;
* ``<out>/archive_info.json``: the settings and counts.

``count_crossing_segments(train_csv, out_folder)`` counts the prepared training segments
(``prepare_folder`` of ``<out>``) that cover speech of more than one speaker, i.e. that cross a speaker
change: the segmenter cuts at pauses of at least ``min_silence`` (0.3 s), and the turns of a two-speaker
recording are separated by pauses drawn from the same range as all others, some shorter than that.

Command line::

    python -m speechbrain_ssrl.data.minivox_archive build --minivox data/minivox_demo --out data/minivox_archive
    python -m speechbrain_ssrl.data.minivox_archive count --archive data/minivox_archive --train_csv <save>/train.csv \
        [--run <SSRL output folder>]   # + NMI / purity of the run's k-means start and latest labels (reading only)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

__all__ = ["ArchiveConfig", "FORMATS", "build_archive", "read_turns", "count_crossing_segments", "segment_speakers",
           "run_label_quality", "main"]

TURNS_FILE = os.path.join("truth", "turns.csv")
INFO_FILE = "archive_info.json"
RECORDINGS = "recordings"
COLLECTIONS = ("podcast_north", "radio_archive", "meetings_2019", "interviews")

#: name -> (extension, soundfile format, subtype, sample rate, channels)
FORMATS: Dict[str, Tuple[str, str, Optional[str], int, int]] = {
    "flac_44k_stereo": ("flac", "FLAC", "PCM_16", 44100, 2),
    "mp3_22k": ("mp3", "MP3", None, 22050, 1),
    "wav_8k": ("wav", "WAV", "PCM_16", 8000, 1),
    "wav_16k": ("wav", "WAV", "PCM_16", 16000, 1),
}


@dataclass(frozen=True)
class ArchiveConfig:
    """How the archive is made (all draws from ``seed``)."""

    seed: int = 0
    two_speaker_fraction: float = 0.25  #: share of the speakers that share a recording with another speaker
    pause_min: float = 0.15  #: seconds of near-silence between two utterances, drawn uniformly ...
    pause_max: float = 1.2  #: ... in [pause_min, pause_max] (some below the segmenter's 0.3 s minimum pause)
    turn_min: int = 1  #: utterances per turn in a two-speaker recording, drawn in [turn_min, turn_max]
    turn_max: int = 3
    pause_level_dbfs: float = -70.0  #: level of the white noise in pauses and at the ends
    format_weights: Tuple[float, ...] = (0.3, 0.3, 0.15, 0.25)  #: FORMATS' order


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return x
    g = np.gcd(sr_in, sr_out)
    return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def _training_utterances(minivox_folder: str) -> Dict[str, List[dict]]:
    """{training speaker: [utterance rows of utterances.csv, in session / number order]}."""
    with open(os.path.join(minivox_folder, "meta.csv"), newline="", encoding="utf-8") as f:
        train_spk = {r["spk_id"] for r in csv.DictReader(f) if r["split"] == "train"}
    by_spk: Dict[str, List[dict]] = defaultdict(list)
    with open(os.path.join(minivox_folder, "utterances.csv"), newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["spk_id"] in train_spk:
                by_spk[r["spk_id"]].append(r)
    if not by_spk:
        raise ValueError(f"{minivox_folder}: no training utterances in utterances.csv / meta.csv. Fix: pass a built MiniVox folder")
    return {s: sorted(rows, key=lambda r: r["wav"]) for s, rows in sorted(by_spk.items())}


def _turn_order(utts: Dict[str, List[dict]], speakers: Sequence[str], cfg: ArchiveConfig, rng) -> List[dict]:
    """The utterances of one recording: one speaker's in order, or two speakers' alternating in turns."""
    if len(speakers) == 1:
        return list(utts[speakers[0]])
    queues = [list(utts[s]) for s in speakers]
    out, who = [], int(rng.integers(2))
    while any(queues):
        if not queues[who]:
            who = 1 - who
        n = int(rng.integers(cfg.turn_min, cfg.turn_max + 1))
        out.extend(queues[who][:n])
        del queues[who][:n]
        who = 1 - who
    return out


def build_archive(minivox_folder: str, out_folder: str, cfg: ArchiveConfig = ArchiveConfig(), progress: bool = True) -> dict:
    """Writes the archive (see the module's docstring); returns the counts written to ``archive_info.json``.
    A complete archive with the same settings is left as it is."""
    minivox_folder, out_folder = os.path.abspath(minivox_folder), os.path.abspath(out_folder)
    info_path = os.path.join(out_folder, INFO_FILE)
    settings = {"minivox_folder": minivox_folder, **asdict(cfg)}
    settings["format_weights"] = list(cfg.format_weights)
    if os.path.isfile(info_path):
        with open(info_path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("settings") == settings and old.get("complete"):
            return old
    if len(cfg.format_weights) != len(FORMATS):
        raise ValueError(f"format_weights has {len(cfg.format_weights)} values: give one per format ({', '.join(FORMATS)})")
    rng = np.random.default_rng(cfg.seed)
    utts = _training_utterances(minivox_folder)
    speakers = list(utts)
    rng.shuffle(speakers)
    n_pairs = int(round(len(speakers) * cfg.two_speaker_fraction / 2))
    groups = [speakers[2 * i: 2 * i + 2] for i in range(n_pairs)] + [[s] for s in speakers[2 * n_pairs:]]
    order = rng.permutation(len(groups))
    groups = [groups[i] for i in order]
    p = np.asarray(cfg.format_weights, dtype=float)
    fmt_names = list(FORMATS)

    for sub in (RECORDINGS, "truth"):
        shutil.rmtree(os.path.join(out_folder, sub), ignore_errors=True)
        os.makedirs(os.path.join(out_folder, sub))
    for sub in ("noise", "rir"):
        src, dst = os.path.join(minivox_folder, sub), os.path.join(out_folder, sub)
        if os.path.isdir(src) and not os.path.isdir(dst):
            shutil.copytree(src, dst)
    pause_amp = 10 ** (cfg.pause_level_dbfs / 20)
    turns: List[List[object]] = []
    formats: Counter = Counter()
    seconds = 0.0
    n_changes = 0
    for i, spks in enumerate(tqdm(groups, desc="archive recordings", disable=not progress)):
        fmt = fmt_names[int(rng.choice(len(fmt_names), p=p / p.sum()))]
        ext, major, subtype, sr, channels = FORMATS[fmt]
        rel = os.path.join(RECORDINGS, COLLECTIONS[i % len(COLLECTIONS)], f"episode_{i:04d}.{ext}")
        pieces, t = [], 0.0
        lead = (pause_amp * rng.standard_normal(int(0.5 * 16000))).astype(np.float32)
        pieces.append(lead)
        t += lead.size / 16000
        last_spk = None
        for k, u in enumerate(_turn_order(utts, spks, cfg, rng)):
            x, sr_u = sf.read(os.path.join(minivox_folder, "wav", u["wav"]), dtype="float32")
            if sr_u != 16000:
                raise ValueError(f"{u['wav']}: {sr_u} Hz; MiniVox writes 16 kHz")
            if k:
                gap = float(rng.uniform(cfg.pause_min, cfg.pause_max))
                pieces.append((pause_amp * rng.standard_normal(int(gap * 16000))).astype(np.float32))
                t += int(gap * 16000) / 16000
            turns.append([rel.replace(os.sep, "/"), round(t, 4), round(t + x.size / 16000, 4), u["spk_id"], u["wav"]])
            n_changes += int(last_spk is not None and last_spk != u["spk_id"])
            last_spk = u["spk_id"]
            pieces.append(x)
            t += x.size / 16000
        pieces.append(lead)
        audio = _resample(np.concatenate(pieces), 16000, sr)
        if channels == 2:  # a second channel: the same voice, slightly quieter
            audio = np.stack([audio, 0.8 * audio], axis=1)
        peak = float(np.max(np.abs(audio)))
        if peak > 0.99:
            audio = audio * (0.99 / peak)
        path = os.path.join(out_folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sf.write(path, audio, sr, format=major, subtype=subtype)
        formats[fmt] += 1
        seconds += t + lead.size / 16000
    with open(os.path.join(out_folder, TURNS_FILE), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["recording", "start", "stop", "spk_id", "source"])
        w.writerows(turns)
    info = {
        "settings": settings,
        "complete": True,
        "recordings": len(groups),
        "two_speaker_recordings": n_pairs,
        "speaker_changes": n_changes,
        "speakers": len(speakers),
        "utterances": len(turns),
        "hours": round(seconds / 3600, 3),
        "formats": dict(sorted(formats.items())),
    }
    with open(info_path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return info


def read_turns(archive_folder: str) -> Dict[str, List[Tuple[float, float, str]]]:
    """{recording path relative to the archive: [(start, stop, spk_id)] in time order}."""
    out: Dict[str, List[Tuple[float, float, str]]] = defaultdict(list)
    with open(os.path.join(archive_folder, TURNS_FILE), newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            out[r["recording"]].append((float(r["start"]), float(r["stop"]), r["spk_id"]))
    return dict(out)


def _recording_of(segment_id: str) -> str:
    """The recording's path relative to the archive from a segment ID of ``prepare_folder`` (``a--b--c.ext--00003``)."""
    return segment_id.rsplit("--", 1)[0].replace("--", "/")


def _segment_cover(train_csv: str, archive_folder: str, sample_rate: int, tolerance: float):
    """Per row of ``train_csv``: (seconds, {speaker: seconds of their speech inside the segment} or None when the
    row's recording is not in the truth file)."""
    turns = read_turns(archive_folder)
    with open(train_csv, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            a, b = int(r["start"]) / sample_rate, int(r["stop"]) / sample_rate
            rec = turns.get(_recording_of(r["ID"]))
            if rec is None:
                yield b - a, None
                continue
            cover: Counter = Counter()
            for s, e, spk in rec:
                ov = min(b, e) - max(a, s)
                if ov > tolerance:
                    cover[spk] += ov
            yield b - a, cover


def count_crossing_segments(
    train_csv: str, archive_folder: str, sample_rate: int = 16000, tolerance: float = 0.05
) -> dict:
    """Counts the segments of ``train_csv`` (prepared from ``archive_folder`` as the data folder) that hold more
    than ``tolerance`` seconds of speech of two or more speakers, and their share of the training audio.

    Returns ``{"segments", "crossing", "crossing_fraction", "crossing_seconds_fraction", "segments_per_speaker_min",
    "speakers_found", "unmatched"}``; ``unmatched`` counts segments whose recording is not in the truth file.
    """
    n = crossing = unmatched = 0
    sec = sec_crossing = 0.0
    per_spk: Counter = Counter()
    for seconds, cover in _segment_cover(train_csv, archive_folder, sample_rate, tolerance):
        n += 1
        sec += seconds
        if cover is None:
            unmatched += 1
            continue
        if len(cover) > 1:
            crossing += 1
            sec_crossing += seconds
        if cover:
            per_spk[cover.most_common(1)[0][0]] += 1
    return {
        "segments": n,
        "crossing": crossing,
        "crossing_fraction": round(crossing / max(n, 1), 4),
        "crossing_seconds_fraction": round(sec_crossing / max(sec, 1e-9), 4),
        "speakers_found": len(per_spk),
        "segments_per_speaker_min": min(per_spk.values()) if per_spk else 0,
        "unmatched": unmatched,
    }


def segment_speakers(train_csv: str, archive_folder: str, sample_rate: int = 16000) -> List[Optional[str]]:
    """The speaker with the most speech in each row's segment (None: no known speech in it)."""
    return [cover.most_common(1)[0][0] if cover else None
            for _, cover in _segment_cover(train_csv, archive_folder, sample_rate, 0.0)]


def run_label_quality(run_folder: str, archive_folder: str) -> dict:
    """NMI / purity / accuracy against the segments' true speakers (``segment_speakers``) of an SSRL run's
    pseudo labels on the archive: its k-means start (``initial_clustering/initial_clustering.pt``) and its
    latest labels (``save/CKPT+*/pseudo_labels.ckpt``). For reading a label-free run afterwards; never used in
    training."""
    import torch

    from speechbrain_ssrl.export import latest_checkpoint
    from speechbrain_ssrl.metrics import pseudo_label_report

    spk = segment_speakers(os.path.join(run_folder, "save", "train.csv"), archive_folder)
    keep = torch.tensor([s is not None for s in spk])
    names = sorted({s for s in spk if s is not None})
    index = {name: i for i, name in enumerate(names)}
    truth = torch.tensor([index[s] if s is not None else -1 for s in spk])[keep]
    out = {}
    start = os.path.join(run_folder, "initial_clustering", "initial_clustering.pt")
    ckpt = latest_checkpoint(run_folder)
    for name, path in (("start", start), ("end", os.path.join(ckpt, "pseudo_labels.ckpt") if ckpt else None)):
        if path is None or not os.path.isfile(path):
            continue
        labels = torch.load(path, map_location="cpu", weights_only=False)["labels"].long()
        if labels.numel() != keep.numel():
            raise ValueError(f"{path} has {labels.numel()} labels, {run_folder}/save/train.csv {keep.numel()} rows")
        rep = pseudo_label_report(labels[keep], truth)
        out[name] = {k: round(float(rep[k]), 4) for k in ("nmi", "purity", "accuracy")}
        out[name]["clusters"] = int(torch.unique(labels).numel())
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m speechbrain_ssrl.data.minivox_archive", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the archive from a built MiniVox folder")
    b.add_argument("--minivox", required=True, help="a MiniVox folder (python -m speechbrain_ssrl.data.minivox)")
    b.add_argument("--out", required=True)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--two_speaker_fraction", type=float, default=ArchiveConfig.two_speaker_fraction)
    c = sub.add_parser("count", help="count prepared segments that cross a speaker change")
    c.add_argument("--archive", required=True)
    c.add_argument("--train_csv", required=True, help="train.csv of a run with --data_format=folder --data_folder=<archive>")
    c.add_argument("--run", default=None, help="also the label quality of this SSRL run on the archive (start and end)")
    c.add_argument("--json", default=None, help="also write the counts here")
    a = ap.parse_args(argv)
    if a.cmd == "build":
        info = build_archive(a.minivox, a.out, ArchiveConfig(seed=a.seed, two_speaker_fraction=a.two_speaker_fraction))
    else:
        info = count_crossing_segments(a.train_csv, a.archive)
        if a.run:
            info["labels"] = run_label_quality(a.run, a.archive)
        if a.json:
            with open(a.json, "w", encoding="utf-8") as f:
                json.dump(info, f, indent=1)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
