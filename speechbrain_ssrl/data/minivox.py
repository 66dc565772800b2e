"""MiniVox: an offline corpus with VoxCeleb's on-disk layout, synthesised from Debian's voices.

VoxCeleb cannot be downloaded everywhere; MiniVox lets the very same preparation, training and
scoring code run on any Debian machine::

    <root>/wav/<speaker id>/<session id>/<utt>.wav   16 kHz, mono, 16-bit PCM
    <root>/veri_test2.txt                            "<0|1> spk/sess/utt.wav spk/sess/utt.wav" (test speakers)
    <root>/meta.csv                                  speaker id -> voice, engine, person, transform, split
    <root>/utterances.csv                            per-utterance render settings and text (diagnostics)
    <root>/noise/*.wav, <root>/noise.csv             coloured noise and babble, for AddNoise (no music:
                                                     there is no offline source of it)
    <root>/rir/*.wav, <root>/rir.csv                 simulated room impulse responses, for AddReverb
    <root>/build_info.json                           arguments, statistics, build time

Voices (all Debian packages):

* **MBROLA** diphone voices (``espeak-ng -v mb-xx[-en] --pho`` gives the phonemes, ``mbrola`` speaks them;
  espeak-ng's own pipe to mbrola drops frames now and then): each was cut from one real
  person's recordings. The English readers (us1-3, en1 and every database with an ``mb-xx-en``
  voice) are the **test** speakers; the others read English with their own language's rules and are
  **training** speakers. cn1 (broken), bz1 and hn1 (no espeak-ng voice) are dropped; fr2, the
  closest voice to fr4 (a test voice), is held back.
* **flite** awb, rms, slt (real persons: test) and kal16 (training). flite slt/awb are the same people
  as RHVoice slt/alan, so they are never split across train and test.
* **espeak-ng** formant variants (``en-us+<variant>``): synthetic, no real person; training filler.
* **Transformed copies** of training voices (``sox pitch``, which shifts pitch and formants while
  keeping the tempo) count as new training speakers. Test voices are never transformed into training.

Every utterance has its own sentence (6-20 words cut from ``/usr/share/common-licenses``; sentences
are split between train and test), a random pitch (espeak ``-p`` 30-70) and speed (140-190 wpm),
and always some noise (white, pink or brown, SNR 10-40 dB; MBROLA output has exact digital silence).
Each speaker has several sessions (like VoxCeleb videos), each with its own channel: a high-pass
(50-150 Hz), a low-pass (5-7.8 kHz), one or two peaking-EQ bands (+-6 dB) and a recording level
(-32 to -18 dBFS), and its own background-noise colour. Utterances longer than 8.5 s (voices that
spell English letter by letter) are cropped to a random 5-8 s window.

Without MBROLA (Debian ``contrib``/``non-free`` not enabled) the builder warns and falls back to flite
and espeak-ng formant voices, keeping the speaker counts: only the flite voices are then real persons,
so the variety of voices shrinks from ~75 persons to 4 plus synthetic variants.

Sizes: ``ci`` (11 speakers x 8 utterances, seconds), ``demo`` (~116 training speakers, ~2,300
training utterances, 23 test voices, 5,520 trials, ~2-3 min on 2 cores), ``large`` (~305 training
speakers x 64 utterances, same test set as demo). The output is deterministic for a given seed and
set of installed voices; re-running ``build`` on a complete folder with the same arguments does
nothing.

CLI: ``python -m speechbrain_ssrl.data.minivox --size demo --out data/minivox_demo`` (or ``minivox-build``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
from tqdm import tqdm

from speechbrain_ssrl.data.augment_data import make_augment_csv
from speechbrain_ssrl.data.trials import Trial, write_trials

__all__ = [
    "SIZES",
    "SizeConfig",
    "Voice",
    "VoiceInventory",
    "Speaker",
    "UttJob",
    "Plan",
    "build",
    "discover_voices",
    "extract_sentences",
    "make_plan",
    "render_utterance",
    "main",
]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
#: 2: MBROLA voices rendered by mbrola itself from espeak-ng's phonemes (reproducible; 1: espeak-ng's pipe)
FORMAT_VERSION = 2
LICENSES_DIR = "/usr/share/common-licenses"
MBROLA_DIR = "/usr/share/mbrola"

#: MBROLA databases that cannot be used, and why.
MBROLA_BROKEN = {"cn1": "fails in espeak-ng", "bz1": "no espeak-ng voice", "hn1": "no espeak-ng voice"}
#: MBROLA databases kept out of training: fr2 is the closest voice to fr4 (a test voice).
MBROLA_HELD_BACK = {"fr2"}
#: MBROLA databases that read English directly (besides those with an ``mb-xx-en`` voice).
MBROLA_ENGLISH = {"us1", "us2", "us3", "en1"}
#: flite voices of real persons used for testing, and for training (kal16; kal is the same person).
FLITE_TEST = ("awb", "rms", "slt")
FLITE_TRAIN = ("kal16",)
#: Mean F0 (Hz) of the flite voices, measured once with flite 2.2; rms ignores the F0 target.
FLITE_F0 = {"awb": 120.0, "slt": 170.0, "kal16": 100.0}
#: espeak-ng variants that do not sound like a talker (whisper, robots, effects).
ESPEAK_VARIANT_EXCLUDE = {
    "whisper", "whisperf", "Demonic", "announcer", "UniRobot", "anikaRobot", "fast", "croak",
    "Tweaky", "Storm", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
}
NOISE_COLOURS = ("white", "pink", "brown")
MAX_UTT_SECONDS = 8.5  # longer renders are cropped to a random window of CROP_SECONDS
CROP_SECONDS = (5.0, 8.0)
TARGET_SECONDS = (3.3, 7.0)  # used to choose a sentence length for the speaking rate


@dataclass(frozen=True)
class SizeConfig:
    """How many voices, utterances and trials a MiniVox size has."""

    n_test_mbrola: Optional[int]  # English MBROLA test voices (None: all)
    n_test_flite: int  # flite test voices (awb, rms, slt)
    n_train_real: Optional[int]  # real-person training voices, MBROLA + kal16 (None: all)
    n_transforms: int  # transformed copies per real training voice
    n_transformed_voices: Optional[int]  # real training voices that get copies (None: all)
    n_filler: int  # espeak-ng formant voices in training
    min_train_speakers: int  # more filler is added, if available, to reach this
    train_utts: int
    test_utts: int
    train_sessions: int
    test_sessions: int
    trials_per_utt: Tuple[int, int]  # (target, non-target) trials per enrolment utterance
    snr_db: Tuple[float, float]
    n_noise_per_colour: int
    n_babble: int
    n_rir: int
    noise_seconds: float


SIZES: Dict[str, SizeConfig] = {
    "ci": SizeConfig(
        n_test_mbrola=4, n_test_flite=1, n_train_real=4, n_transforms=1, n_transformed_voices=1,
        n_filler=1, min_train_speakers=0, train_utts=8, test_utts=8, train_sessions=2,
        test_sessions=2, trials_per_utt=(3, 3), snr_db=(20.0, 40.0), n_noise_per_colour=1,
        n_babble=2, n_rir=3, noise_seconds=5.0,
    ),
    "demo": SizeConfig(
        n_test_mbrola=None, n_test_flite=3, n_train_real=None, n_transforms=1,
        n_transformed_voices=None, n_filler=12, min_train_speakers=100, train_utts=20, test_utts=30,
        train_sessions=3, test_sessions=3, trials_per_utt=(4, 4), snr_db=(10.0, 40.0),
        n_noise_per_colour=2, n_babble=10, n_rir=20, noise_seconds=10.0,
    ),
    "large": SizeConfig(
        n_test_mbrola=None, n_test_flite=3, n_train_real=None, n_transforms=4,
        n_transformed_voices=None, n_filler=45, min_train_speakers=300, train_utts=64, test_utts=30,
        train_sessions=4, test_sessions=3, trials_per_utt=(4, 4), snr_db=(10.0, 40.0),
        n_noise_per_colour=4, n_babble=30, n_rir=50, noise_seconds=10.0,
    ),
}


# --------------------------------------------------------------------------------------------------
# Voices
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Voice:
    """A synthesis voice. ``person`` identifies the human behind it (one per MBROLA database)."""

    name: str  # espeak-ng voice ("mb-us1", "en-us+m3") or flite voice ("slt")
    engine: str  # "mbrola" | "flite" | "espeak"
    person: str  # "mbrola:us1", "flite:slt", "espeak:m3"
    gender: str  # "F", "M" or "?"
    english: bool  # reads English with English rules


@dataclass(frozen=True)
class VoiceInventory:
    """The voices installed on this machine."""

    mbrola: Tuple[Voice, ...]
    flite: Tuple[Voice, ...]
    espeak: Tuple[Voice, ...]


def _run(cmd: Sequence[str], data: Optional[bytes] = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), input=data, capture_output=True, check=False)


def _parse_voice_table(text: str) -> List[Tuple[str, str]]:
    """(file name, gender) of each row of ``espeak-ng --voices=...``."""
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 5:
            continue
        gender = fields[2].split("/")[-1] if "/" in fields[2] else "?"
        rows.append((fields[4].split("/")[-1], gender if gender in ("F", "M") else "?"))
    return rows


def discover_voices(mbrola_dir: Optional[str] = None) -> VoiceInventory:
    """Lists the usable MBROLA (one voice per database), flite and espeak-ng formant voices.

    ``mbrola_dir`` defaults to :data:`MBROLA_DIR`. Raises ``RuntimeError`` naming the fix when
    espeak-ng is missing.
    """
    mbrola_dir = MBROLA_DIR if mbrola_dir is None else mbrola_dir
    if shutil.which("espeak-ng") is None:
        raise RuntimeError(
            "espeak-ng is not installed: MiniVox needs it. Fix: run tools/install_system_deps.sh "
            "(or apt-get install espeak-ng sox flite mbrola mbrola-us1 ...)"
        )
    # MBROLA: databases present on disk x voices espeak-ng knows
    mbrola: List[Voice] = []
    dbs = sorted(os.listdir(mbrola_dir)) if os.path.isdir(mbrola_dir) and shutil.which("mbrola") else []
    if dbs:
        table = dict(_parse_voice_table(_run(["espeak-ng", "--voices=mb"]).stdout.decode(errors="replace")))
        for db in dbs:
            if db in MBROLA_BROKEN or not re.fullmatch(r"[a-z]{2}\d+", db):
                continue
            for name, english in ((f"mb-{db}-en", True), (f"mb-{db}", db in MBROLA_ENGLISH)):
                if name in table:
                    mbrola.append(Voice(name, "mbrola", f"mbrola:{db}", table[name], english))
                    break
    # flite
    flite: List[Voice] = []
    if shutil.which("flite") is not None:
        out = _run(["flite", "-lv"]).stdout.decode(errors="replace")
        names = set(out.split(":", 1)[-1].split())
        gender = {"awb": "M", "rms": "M", "slt": "F", "kal16": "M"}
        for name in FLITE_TEST + FLITE_TRAIN:
            if name in names:
                flite.append(Voice(name, "flite", f"flite:{name.replace('16', '')}", gender[name], True))
    # espeak-ng formant variants
    espeak: List[Voice] = []
    for name, g in _parse_voice_table(_run(["espeak-ng", "--voices=variant"]).stdout.decode(errors="replace")):
        if name not in ESPEAK_VARIANT_EXCLUDE:
            espeak.append(Voice(f"en-us+{name}", "espeak", f"espeak:{name}", g, True))
    espeak.sort(key=lambda v: v.name)
    return VoiceInventory(tuple(mbrola), tuple(flite), tuple(espeak))


# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------
def extract_sentences(src: str = LICENSES_DIR, min_words: int = 6, max_words: int = 20) -> List[str]:
    """Plain English sentences of ``min_words``-``max_words`` words from the license texts in ``src``.

    Long sentences are cut into near-equal pieces. The order is deterministic (sorted files, text
    order), duplicates are dropped.
    """
    if not os.path.isdir(src):
        raise FileNotFoundError(
            f"{src} does not exist: MiniVox takes its sentences from the license texts that Debian's "
            "base-files package installs there. Fix: build MiniVox on a Debian/Ubuntu machine."
        )
    seen: set = set()
    out: List[str] = []
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="ignore") as f:
            text = re.sub(r"\s+", " ", f.read())
        for raw in re.split(r"(?<=[.;:!?])\s+", text):
            s = re.sub(r"^(\(?[0-9a-zA-Z]{1,3}[).]\s*)+", "", raw)  # list markers "a)", "(1)", "2."
            s = re.sub(r"\S*(https?:|www\.|@|\.org|\.com)\S*", " ", s)  # addresses
            s = re.sub(r"[^A-Za-z0-9 ,'.-]", " ", s)
            s = re.sub(r"\s+", " ", s).strip(" .,-'")
            words = s.split()
            if not words:
                continue
            n_pieces = 1 if len(words) <= max_words else math.ceil(len(words) / 16)
            size = math.ceil(len(words) / n_pieces)
            for i in range(0, len(words), size):
                piece = words[i : i + size]
                t = " ".join(piece).strip(" ,.-'")
                letters = t.replace(" ", "")
                if not (min_words <= len(piece) <= max_words) or not letters:
                    continue
                if sum(c.isalpha() for c in letters) < 0.85 * len(letters):
                    continue
                if t.isupper():
                    t = t.capitalize()
                key = t.lower()
                if key not in seen:
                    seen.add(key)
                    out.append(t[0].upper() + t[1:] + ".")
    if len(out) < 100:
        raise RuntimeError(f"only {len(out)} usable sentences found in {src}; MiniVox needs at least 100")
    return out


class _SentencePool:
    """Sentences bucketed by word count, drawn without replacement per speaker."""

    def __init__(self, sentences: Sequence[str]):
        self.sentences = list(sentences)
        self.by_len: Dict[int, List[int]] = {}
        for i, s in enumerate(self.sentences):
            self.by_len.setdefault(len(s.split()), []).append(i)

    def draw(self, rng: np.random.Generator, lo: int, hi: int, used: set) -> int:
        cands = [i for n in range(lo, hi + 1) for i in self.by_len.get(n, []) if i not in used]
        if not cands:  # every sentence of that length used: allow repeats
            cands = [i for n in range(lo, hi + 1) for i in self.by_len.get(n, [])]
        if not cands:
            cands = list(range(len(self.sentences)))
        return int(cands[int(rng.integers(len(cands)))])


# --------------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Channel:
    """A session's recording channel: filters, level and background-noise colour."""

    highpass_hz: float
    lowpass_hz: float
    eq: Tuple[Tuple[float, float, float], ...]  # (centre Hz, Q, gain dB) peaking filters
    level_dbfs: float  # RMS of the active speech
    noise: str  # white | pink | brown


@dataclass(frozen=True)
class Speaker:
    spk_id: str
    voice: Voice
    transform_cents: int  # 0: none; else sox pitch shift (pitch and formants, tempo kept)
    split: str  # train | test
    sessions: Tuple[str, ...]


@dataclass(frozen=True)
class UttJob:
    """Everything needed to render one utterance, deterministically."""

    rel_path: str  # spk/session/00001.wav
    spk_id: str
    voice: str
    engine: str
    text: str
    pitch: int
    speed: int
    transform_cents: int
    channel: Channel
    snr_db: float
    seed: int


@dataclass
class Plan:
    size: str
    seed: int
    mbrola: bool
    speakers: List[Speaker]
    jobs: List[UttJob]
    trials: List[Trial]
    n_sentences: Tuple[int, int]  # train, test
    notes: List[str] = field(default_factory=list)

    def digest(self) -> str:
        """A hash of everything that determines the audio files."""
        h = hashlib.sha1()
        for j in self.jobs:
            h.update(repr(asdict(j)).encode())
        return h.hexdigest()


_SESSION_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _session_id(rng: np.random.Generator) -> str:
    return "".join(_SESSION_ALPHABET[i] for i in rng.integers(0, 64, 11))


def _channel(rng: np.random.Generator) -> Channel:
    n_eq = int(rng.integers(1, 3))
    eq = tuple(
        (float(round(math.exp(rng.uniform(math.log(200), math.log(5000))), 1)),
         float(round(rng.uniform(0.7, 2.0), 2)), float(round(rng.uniform(-6, 6), 2)))
        for _ in range(n_eq)
    )
    return Channel(
        highpass_hz=float(round(rng.uniform(50, 150), 1)),
        lowpass_hz=float(round(rng.uniform(5000, 7800), 1)),
        eq=eq,
        level_dbfs=float(round(rng.uniform(-32, -18), 2)),
        noise=NOISE_COLOURS[int(rng.integers(len(NOISE_COLOURS)))],
    )


def _transform_cents(rng: np.random.Generator, copy_index: int) -> int:
    """Pitch+formant shift of the ``copy_index``-th copy: alternating sign, growing size."""
    sign = -1 if copy_index % 2 == 0 else 1
    level = copy_index // 2
    return int(sign * round(rng.uniform(220 + 200 * level, 330 + 200 * level)))


def _select_voices(
    inv: VoiceInventory, cfg: SizeConfig, rng: np.random.Generator
) -> Tuple[List[Voice], List[Tuple[Voice, int]], List[str]]:
    """Test voices, training (voice, transform cents) pairs and notes about fallbacks."""
    notes: List[str] = []
    flite = {v.name: v for v in inv.flite}
    fl_test = [flite[n] for n in FLITE_TEST if n in flite][: cfg.n_test_flite]
    fl_train = [flite[n] for n in FLITE_TRAIN if n in flite]
    variants = list(inv.espeak)
    variants = [variants[i] for i in rng.permutation(len(variants))]
    n_test_target = (cfg.n_test_mbrola if cfg.n_test_mbrola is not None else 20) + cfg.n_test_flite
    if inv.mbrola:
        english = [v for v in inv.mbrola if v.english]
        english = [english[i] for i in rng.permutation(len(english))]
        test = english[: cfg.n_test_mbrola] if cfg.n_test_mbrola is not None else english
        test = sorted(test, key=lambda v: v.name) + fl_test
        held = {f"mbrola:{db}" for db in MBROLA_HELD_BACK}
        pool = [v for v in inv.mbrola if not v.english and v.person not in held] + fl_train
        pool = [pool[i] for i in rng.permutation(len(pool))]
        real = pool[: cfg.n_train_real] if cfg.n_train_real is not None else pool
        fillers = variants
    else:
        notes.append(
            "MBROLA voices are not installed (Debian contrib/non-free): falling back to flite and "
            "espeak-ng formant voices from Debian main. The speaker counts are kept, but only the flite "
            "voices (at most 4) are real persons: every other speaker is an espeak-ng formant variant or "
            "a transformed copy, so there are far fewer distinct voices and results are not comparable "
            "with an MBROLA build. Run tools/install_system_deps.sh as root to get the MBROLA voices."
        )
        n_var_test = max(0, n_test_target - len(fl_test))
        test = fl_test + variants[:n_var_test]
        rest = variants[n_var_test:]
        n_real = cfg.n_train_real if cfg.n_train_real is not None else 52  # as many as with MBROLA
        real = fl_train + rest[: max(0, n_real - len(fl_train))]
        fillers = rest[max(0, n_real - len(fl_train)) :]
    if len(test) < 2:
        raise RuntimeError("fewer than 2 test voices are available: install espeak-ng, flite and MBROLA voices")
    train: List[Tuple[Voice, int]] = [(v, 0) for v in real]
    n_tv = len(real) if cfg.n_transformed_voices is None else min(cfg.n_transformed_voices, len(real))
    for v in real[:n_tv]:
        for k in range(cfg.n_transforms):
            train.append((v, _transform_cents(rng, k)))
    n_fill = max(cfg.n_filler, cfg.min_train_speakers - len(train))
    if n_fill > len(fillers):
        notes.append(f"only {len(fillers)} espeak-ng filler voices available (wanted {n_fill})")
    train += [(v, 0) for v in fillers[:n_fill]]
    if len(test) < n_test_target:
        notes.append(f"{len(test)} test voices (the size asks for {n_test_target})")
    if cfg.min_train_speakers and len(train) < cfg.min_train_speakers:
        notes.append(f"{len(train)} training speakers (the size asks for {cfg.min_train_speakers})")
    test_persons = {v.person for v in test}
    assert not test_persons & {v.person for v, _ in train}, "a test voice leaked into training"
    return test, train, notes


def _make_trials(
    utts: Sequence[Tuple[str, str, str]], k_target: int, k_non: int, rng: np.random.Generator
) -> List[Trial]:
    """Trials for each enrolment utterance: targets (other sessions first) and random non-targets.

    ``utts`` are (relative path, speaker, session). No pair appears twice (in either order).
    """
    by_spk: Dict[str, List[int]] = {}
    for i, (_, spk, _) in enumerate(utts):
        by_spk.setdefault(spk, []).append(i)
    used: set = set()
    trials: List[Trial] = []
    n = len(utts)
    for e, (path_e, spk_e, sess_e) in enumerate(utts):
        same = [i for i in by_spk[spk_e] if i != e]
        other_sess = [same[i] for i in rng.permutation(len(same)) if utts[same[i]][2] != sess_e]
        same_sess = [same[i] for i in rng.permutation(len(same)) if utts[same[i]][2] == sess_e]
        got = 0
        for i in other_sess + same_sess:
            if got == k_target:
                break
            key = (min(e, i), max(e, i))
            if key not in used:
                used.add(key)
                trials.append(Trial(1, path_e, utts[i][0]))
                got += 1
        got, tries = 0, 0
        while got < k_non and tries < 50 * k_non:
            tries += 1
            i = int(rng.integers(n))
            key = (min(e, i), max(e, i))
            if utts[i][1] == spk_e or key in used:
                continue
            used.add(key)
            trials.append(Trial(0, path_e, utts[i][0]))
            got += 1
    return trials


def make_plan(
    size: str = "ci",
    seed: int = 0,
    inventory: Optional[VoiceInventory] = None,
    sentences: Optional[Sequence[str]] = None,
) -> Plan:
    """Chooses voices, speakers, sessions, sentences, render settings and trials (no audio).

    Deterministic for (size, seed, installed voices, license texts).
    """
    if size not in SIZES:
        raise ValueError(f"unknown MiniVox size {size!r}: choose one of {', '.join(SIZES)}")
    cfg = SIZES[size]
    inv = inventory if inventory is not None else discover_voices()
    sents = list(sentences) if sentences is not None else extract_sentences()
    pools = {"train": _SentencePool(sents[0::2]), "test": _SentencePool(sents[1::2])}
    rng_voice, rng_spk, rng_utt, rng_trial = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    test_voices, train_voices, notes = _select_voices(inv, cfg, rng_voice)

    speakers: List[Speaker] = []
    jobs: List[UttJob] = []
    for split, entries, prefix, n_utts, n_sess in (
        ("test", [(v, 0) for v in test_voices], "id1", cfg.test_utts, cfg.test_sessions),
        ("train", train_voices, "id2", cfg.train_utts, cfg.train_sessions),
    ):
        order = rng_spk.permutation(len(entries))  # ids do not reveal voice or transform
        for rank, idx in enumerate(order):
            voice, cents = entries[int(idx)]
            spk_id = f"{prefix}{rank + 1:04d}"
            sessions: List[str] = []
            while len(sessions) < n_sess:
                s = _session_id(rng_spk)
                if s not in sessions:
                    sessions.append(s)
            channels = [_channel(rng_spk) for _ in sessions]
            speakers.append(Speaker(spk_id, voice, cents, split, tuple(sessions)))
            used: set = set()
            counts = [0] * n_sess
            for u in range(n_utts):
                si = u % n_sess
                counts[si] += 1
                speed = int(rng_utt.integers(140, 191))
                lo = max(6, round(TARGET_SECONDS[0] * speed / 60))
                hi = min(20, int(TARGET_SECONDS[1] * speed / 60))
                k = pools[split].draw(rng_utt, lo, hi, used)
                used.add(k)
                jobs.append(
                    UttJob(
                        rel_path=f"{spk_id}/{sessions[si]}/{counts[si]:05d}.wav",
                        spk_id=spk_id,
                        voice=voice.name,
                        engine=voice.engine,
                        text=pools[split].sentences[k],
                        pitch=int(rng_utt.integers(30, 71)),
                        speed=speed,
                        transform_cents=cents,
                        channel=channels[si],
                        snr_db=float(round(rng_utt.uniform(*cfg.snr_db), 2)),
                        seed=int(rng_utt.integers(2**31 - 1)),
                    )
                )
    test_ids = {s.spk_id for s in speakers if s.split == "test"}
    test_utts = [(j.rel_path, j.spk_id, j.rel_path.split("/")[1]) for j in jobs if j.spk_id in test_ids]
    trials = _make_trials(test_utts, cfg.trials_per_utt[0], cfg.trials_per_utt[1], rng_trial)
    return Plan(size, seed, bool(inv.mbrola), speakers, jobs, trials,
                (len(pools["train"].sentences), len(pools["test"].sentences)), notes)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
def _synthesize(job: UttJob) -> Tuple[np.ndarray, int]:
    """Raw synthesis (float32 mono) and its sample rate."""
    if job.engine == "flite":
        args = ["flite", "-voice", job.voice, "--setf", f"duration_stretch={175.0 / job.speed:.3f}"]
        if job.voice in FLITE_F0:  # espeak -p 30..70 mapped onto 0.84..1.20 x the voice's mean F0
            f0 = FLITE_F0[job.voice] * (0.84 + 0.36 * (job.pitch - 30) / 40)
            args += ["--setf", f"int_f0_target_mean={f0:.0f}"]
        with tempfile.TemporaryDirectory(prefix="minivox_") as tmp:
            out = os.path.join(tmp, "x.wav")
            res = _run(args + ["-t", job.text, "-o", out])
            if res.returncode != 0 or not os.path.isfile(out):
                raise RuntimeError(
                    f"flite failed for voice {job.voice} ({job.rel_path}): {res.stderr.decode(errors='replace')}"
                    " Fix: check that `flite -voice {job.voice} -t hello` works (apt-get install flite)."
                )
            x, sr = sf.read(out, dtype="float32")
    elif job.engine == "mbrola":
        # espeak-ng's phonemes, then MBROLA itself, not espeak-ng's mbrowrap pipe: that pipe drops a frame
        # now and then (more often under load), so two builds of one seed differed in ~16 % of the MBROLA
        # files (483 of 3,010 demo files; 4 of 40 sentences repeated 3 times on a loaded machine, none this way)
        db = job.voice.split("-")[1]  # mb-<db> or mb-<db>-en
        cmd = ["espeak-ng", "-v", job.voice, "-p", str(job.pitch), "-s", str(job.speed), "-q", "--pho", "--stdin"]
        pho = _run(cmd, job.text.encode())
        with tempfile.TemporaryDirectory(prefix="minivox_") as tmp:
            out = os.path.join(tmp, "x.wav")
            res = _run(["mbrola", "-e", os.path.join(MBROLA_DIR, db, db), "-", out], pho.stdout)
            if pho.returncode != 0 or res.returncode != 0 or not os.path.isfile(out) or os.path.getsize(out) <= 44:
                raise RuntimeError(
                    f"espeak-ng --pho | mbrola failed for voice {job.voice} ({job.rel_path}): "
                    f"{(pho.stderr + res.stderr).decode(errors='replace').strip()}. Fix: check that "
                    f"`espeak-ng -v {job.voice} hello` works; reinstall mbrola and its voice package or run "
                    "tools/install_system_deps.sh"
                )
            x, sr = sf.read(out, dtype="float32")
    else:
        cmd = ["espeak-ng", "-v", job.voice, "-p", str(job.pitch), "-s", str(job.speed), "--stdin", "--stdout"]
        res = _run(cmd, job.text.encode())
        if res.returncode != 0 or len(res.stdout) <= 44:
            raise RuntimeError(
                f"espeak-ng failed for voice {job.voice} ({job.rel_path}): "
                f"{res.stderr.decode(errors='replace').strip()}. Fix: check that "
                f"`espeak-ng -v {job.voice} hello` works; reinstall its mbrola voice package or run "
                "tools/install_system_deps.sh"
            )
        x, sr = sf.read(io.BytesIO(res.stdout), dtype="float32")
    if x.ndim > 1:
        x = x.mean(axis=1)
    return np.ascontiguousarray(x, dtype=np.float32), int(sr)


def _transform_and_resample(x: np.ndarray, sr: int, cents: int) -> np.ndarray:
    """``sox pitch`` (pitch + formant shift, tempo kept) and/or resampling to 16 kHz."""
    if cents:
        if shutil.which("sox") is None:
            raise RuntimeError("sox is not installed: MiniVox needs it. Fix: apt-get install sox")
        fmt = ["-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1"]
        cmd = ["sox", "-G", "-R", "-q", *fmt, "-r", str(sr), "-", *fmt, "-r", str(SAMPLE_RATE), "-",
               "pitch", str(cents), "rate", str(SAMPLE_RATE)]
        res = _run(cmd, x.astype(np.float32).tobytes())
        if res.returncode != 0:
            raise RuntimeError(f"sox pitch failed: {res.stderr.decode(errors='replace')}")
        return np.frombuffer(res.stdout, dtype=np.float32).copy()
    if sr != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(sr, SAMPLE_RATE)
        return resample_poly(x, SAMPLE_RATE // g, sr // g).astype(np.float32)
    return x


def _active_power(x: np.ndarray, frame: int = 320, floor_db: float = 35.0) -> float:
    """Mean power of the frames within ``floor_db`` of the loudest one (speech, not silence)."""
    n = len(x) // frame
    if n == 0:
        return float(np.mean(x.astype(np.float64) ** 2))
    e = np.mean(x[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1)
    top = e.max()
    if top <= 0:
        return 0.0
    return float(e[e >= top * 10 ** (-floor_db / 10)].mean())


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance white, pink (1/f power) or brown (1/f^2 power, above 20 Hz) noise."""
    w = rng.standard_normal(n)
    if colour != "white":
        spec = np.fft.rfft(w)
        f = np.maximum(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE), 20.0)
        spec /= np.sqrt(f) if colour == "pink" else f
        w = np.fft.irfft(spec, n)
    return w / (w.std() + 1e-12)


def _peaking_sos(f0: float, q: float, gain_db: float) -> np.ndarray:
    """RBJ-cookbook peaking-EQ biquad as one second-order section."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * f0 / SAMPLE_RATE
    alpha = math.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a, -2 * math.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * math.cos(w0), 1 - alpha / a])
    return np.concatenate([b / den[0], den / den[0]])[None, :]


def _apply_channel(x: np.ndarray, ch: Channel) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    sos = [butter(2, ch.highpass_hz, "highpass", fs=SAMPLE_RATE, output="sos"),
           butter(4, min(ch.lowpass_hz, 0.45 * SAMPLE_RATE), "lowpass", fs=SAMPLE_RATE, output="sos")]
    sos += [_peaking_sos(*band) for band in ch.eq]
    return sosfilt(np.concatenate(sos, axis=0), x)


def _write_wav_atomic(path: str, x: np.ndarray, subtype: str = "PCM_16") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".part"
    sf.write(tmp, x, SAMPLE_RATE, subtype=subtype, format="WAV")
    os.replace(tmp, path)


def render_utterance(job: UttJob, wav_root: str) -> int:
    """Renders one utterance to ``<wav_root>/<job.rel_path>``; returns its number of samples.

    An existing file (written atomically by an earlier, interrupted build) is kept.
    """
    out = os.path.join(wav_root, *job.rel_path.split("/"))
    if os.path.isfile(out):
        return int(sf.info(out).frames)
    x, sr = _synthesize(job)
    x = _transform_and_resample(x, sr, job.transform_cents).astype(np.float64)
    rng = np.random.default_rng(job.seed)
    max_len = int(MAX_UTT_SECONDS * SAMPLE_RATE)
    if len(x) > max_len:  # e.g. voices that spell English letter by letter
        n = int(rng.uniform(*CROP_SECONDS) * SAMPLE_RATE)
        start = int(rng.integers(0, len(x) - n))
        x = x[start : start + n].copy()
        fade = np.linspace(0.0, 1.0, 160)
        x[:160] *= fade
        x[-160:] *= fade[::-1]
    p = _active_power(x)
    if p <= 0:
        raise RuntimeError(f"voice {job.voice} produced silence for {job.rel_path} (text {job.text!r})")
    x = x + coloured_noise(len(x), job.channel.noise, rng) * math.sqrt(p / 10 ** (job.snr_db / 10))
    y = _apply_channel(x, job.channel)
    y *= 10 ** (job.channel.level_dbfs / 20) / math.sqrt(max(_active_power(y), 1e-20))
    peak = float(np.max(np.abs(y)))
    if peak > 0.99:
        y *= 0.99 / peak
    _write_wav_atomic(out, np.round(y * 32767).clip(-32768, 32767).astype(np.int16))
    return len(y)


# --------------------------------------------------------------------------------------------------
# Augmentation material
# --------------------------------------------------------------------------------------------------
def _make_noise(root: str, cfg: SizeConfig, train_files: Sequence[str], rng: np.random.Generator) -> None:
    """Writes ``<root>/noise/``: coloured noise and babble, the offline stand-ins for MUSAN.

    Coloured noise: ``sox synth`` white/pink/brown noise, band-limited at random. Babble: the sum of
    3-8 random **training** utterances (never test speakers). There is no music: no freely licensed
    music ships with Debian's main archive, so MUSAN's music part has no counterpart here.
    """
    folder = os.path.join(root, "noise")
    os.makedirs(folder, exist_ok=True)
    secs = cfg.noise_seconds
    for colour in NOISE_COLOURS:
        for i in range(cfg.n_noise_per_colour):
            out = os.path.join(folder, f"{colour}_{i:02d}.wav")
            hp, lp = round(float(rng.uniform(20, 200))), round(float(rng.uniform(3000, 7900)))
            if os.path.isfile(out):
                continue
            # sox -R repeats the same noise stream: take the i-th non-overlapping stretch of it
            cmd = ["sox", "-R", "-q", "-n", "-r", str(SAMPLE_RATE), "-b", "16", "-c", "1", out + ".part.wav",
                   "synth", f"{(i + 1) * secs:g}", f"{colour}noise", "trim", f"{i * secs:g}",
                   "highpass", str(hp), "lowpass", str(lp), "gain", "-n", "-6"]
            res = _run(cmd)
            if res.returncode != 0:
                raise RuntimeError(
                    f"sox synth failed writing {out}: {res.stderr.decode(errors='replace')}. "
                    "Fix: apt-get install sox"
                )
            os.replace(out + ".part.wav", out)
    n = int(secs * SAMPLE_RATE)
    for b in range(cfg.n_babble):
        k = int(rng.integers(3, 9))
        picks = rng.choice(len(train_files), size=min(k, len(train_files)), replace=False)
        offsets = [int(rng.integers(0, n)) for _ in picks]
        out = os.path.join(folder, f"babble_{b:02d}.wav")
        if os.path.isfile(out):
            continue
        mix = np.zeros(n)
        for idx, off in zip(picks, offsets):
            s, _ = sf.read(train_files[int(idx)], dtype="float64")
            s = np.roll(np.resize(s, n), off)  # tile to the length, random start
            mix += s / math.sqrt(max(_active_power(s), 1e-20))
        mix *= 10 ** (-20 / 20) / math.sqrt(max(_active_power(mix), 1e-20))
        mix *= min(1.0, 0.99 / max(np.max(np.abs(mix)), 1e-9))
        _write_wav_atomic(out, np.round(mix * 32767).astype(np.int16))


def simulated_rir(rng: np.random.Generator, rt60: float) -> np.ndarray:
    """Room impulse response: direct-path peak, a few early reflections, exponentially decaying noise.

    The reverberant tail decays by 60 dB in ``rt60`` seconds; the direct-to-reverberant ratio is drawn
    in 0-10 dB. The direct path is the largest sample (``AddReverb`` aligns on it).
    """
    sr = SAMPLE_RATE
    length = int(min(1.0, 1.1 * rt60 + 0.05) * sr)
    d = int(rng.uniform(0.001, 0.004) * sr)
    t = np.arange(length - d) / sr
    tail = rng.standard_normal(length - d) * np.exp(-6.908 * t / rt60)
    tail *= np.clip(t / 0.005, 0.0, 1.0)  # the diffuse tail builds up over 5 ms
    for _ in range(int(rng.integers(4, 10))):  # early reflections
        k = int(rng.uniform(0.002, 0.04) * sr)
        tail[k] += rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.6) * math.exp(-6.908 * k / sr / rt60)
    drr_db = rng.uniform(0.0, 10.0)
    tail *= math.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    tail *= min(1.0, 0.9 / np.max(np.abs(tail)))
    h = np.zeros(length)
    h[d] = 1.0
    h[d:] += tail
    h[d] = 1.0
    return h.astype(np.float32)


def _make_rirs(root: str, cfg: SizeConfig, rng: np.random.Generator) -> None:
    folder = os.path.join(root, "rir")
    os.makedirs(folder, exist_ok=True)
    for i in range(cfg.n_rir):
        rt60 = float(rng.uniform(0.2, 0.9))
        h = simulated_rir(rng, rt60)
        out = os.path.join(folder, f"rir_{i:03d}_rt{int(round(rt60 * 1000)):03d}ms.wav")
        if not os.path.isfile(out):
            _write_wav_atomic(out, h, subtype="PCM_24")  # FLOAT wavs carry a time stamp


# --------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------
def _identity(size: str, seed: int) -> Dict[str, object]:
    return {"format_version": FORMAT_VERSION, "size": size, "seed": int(seed)}


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def build(out_folder: str, size: str = "ci", seed: int = 0, jobs: int = 2, progress: bool = True) -> str:
    """Builds MiniVox into ``out_folder`` and returns ``out_folder``.

    Args:
        out_folder: created if needed; must be empty, or hold a (possibly interrupted) MiniVox build.
        size: ``"ci"``, ``"demo"`` or ``"large"`` (see :data:`SIZES`).
        seed: everything random (voices, sessions, sentences, settings, noise, trials) follows it.
        jobs: parallel synthesis processes (at most 2 on a shared 2-core machine).
        progress: show a tqdm bar.
    Returns:
        ``out_folder``. A complete build with the same size and seed is left untouched.
    """
    if size not in SIZES:
        raise ValueError(f"unknown MiniVox size {size!r}: choose one of {', '.join(SIZES)}")
    out_folder = os.fspath(out_folder)
    root = os.path.abspath(out_folder)
    info_path = os.path.join(root, "build_info.json")
    ident = _identity(size, seed)
    info = _read_json(info_path)
    if info is not None:
        if {k: info.get(k) for k in ident} != ident:
            raise ValueError(
                f"{root} already holds a MiniVox built with size={info.get('size')}, seed={info.get('seed')} "
                f"(format {info.get('format_version')}); pass another output folder or delete it"
            )
        if info.get("complete"):
            logger.info("MiniVox %s already complete in %s", size, root)
            print(f"MiniVox ({size}, seed {seed}) already built in {root}: nothing to do")
            return out_folder
    elif os.path.isdir(root) and os.listdir(root):
        raise FileExistsError(
            f"{root} is not empty and is not a MiniVox folder (no build_info.json): pass an empty or new folder"
        )
    t0 = time.time()
    cfg = SIZES[size]
    plan = make_plan(size, seed)
    for note in plan.notes:
        print(f"WARNING: {note}", file=sys.stderr)
    os.makedirs(root, exist_ok=True)
    digest = plan.digest()
    if info is not None and info.get("plan_digest") != digest:
        # an interrupted build from other installed voices: start that build over
        for sub in ("wav", "noise", "rir"):
            shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
    _write_json(info_path, {**ident, "complete": False, "plan_digest": digest})

    wav_root = os.path.join(root, "wav")
    samples: Dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=max(1, int(jobs))) as pool:
        futures = {pool.submit(render_utterance, j, wav_root): j for j in plan.jobs}
        bar = tqdm(total=len(futures), desc=f"MiniVox {size}", unit="utt", disable=not progress)
        try:
            for fut in as_completed(futures):
                samples[futures[fut].rel_path] = fut.result()
                bar.update(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            bar.close()

    rng_aug = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    train_ids = {s.spk_id for s in plan.speakers if s.split == "train"}
    train_files = [os.path.join(wav_root, *j.rel_path.split("/")) for j in plan.jobs if j.spk_id in train_ids]
    _make_noise(root, cfg, train_files, rng_aug)
    _make_rirs(root, cfg, rng_aug)
    make_augment_csv(os.path.join(root, "noise"), os.path.join(root, "noise.csv"))
    make_augment_csv(os.path.join(root, "rir"), os.path.join(root, "rir.csv"))

    write_trials(plan.trials, os.path.join(root, "veri_test2.txt"))
    n_utts: Dict[str, int] = {}
    for j in plan.jobs:
        n_utts[j.spk_id] = n_utts.get(j.spk_id, 0) + 1
    _write_csv(
        os.path.join(root, "meta.csv"),
        ["spk_id", "voice", "engine", "person", "gender", "transform", "split", "n_sessions", "n_utterances"],
        [[s.spk_id, s.voice.name, s.voice.engine, s.voice.person, s.voice.gender,
          f"pitch{s.transform_cents:+d}c" if s.transform_cents else "none", s.split, len(s.sessions),
          n_utts[s.spk_id]] for s in sorted(plan.speakers, key=lambda s: s.spk_id)],
    )
    _write_csv(
        os.path.join(root, "utterances.csv"),
        ["wav", "spk_id", "voice", "engine", "transform_cents", "pitch", "speed", "snr_db", "noise",
         "highpass_hz", "lowpass_hz", "level_dbfs", "duration", "text"],
        [[j.rel_path, j.spk_id, j.voice, j.engine, j.transform_cents, j.pitch, j.speed, j.snr_db,
          j.channel.noise, j.channel.highpass_hz, j.channel.lowpass_hz, j.channel.level_dbfs,
          f"{samples[j.rel_path] / SAMPLE_RATE:.3f}", j.text] for j in plan.jobs],
    )
    stats = _stats(plan, samples)
    wall = time.time() - t0
    _write_json(info_path, {
        **ident, "complete": True, "plan_digest": digest, "mbrola": plan.mbrola, "notes": plan.notes,
        "n_sentences_train_test": list(plan.n_sentences), "stats": stats,
        "build_seconds": round(wall, 1), "jobs": int(jobs),
    })
    print(
        f"MiniVox {size} (seed {seed}) built in {wall:.1f} s -> {root}\n"
        f"  train: {stats['train_speakers']} speakers ({stats['train_transformed_speakers']} transformed copies), "
        f"{stats['train_utterances']} utterances, {stats['train_hours']:.2f} h\n"
        f"  test:  {stats['test_speakers']} voices, {stats['test_utterances']} utterances, "
        f"{stats['test_hours']:.2f} h, {stats['trials']} trials ({stats['target_trials']} target)\n"
        f"  utterance duration {stats['min_seconds']:.1f}-{stats['max_seconds']:.1f} s "
        f"(mean {stats['mean_seconds']:.1f})"
    )
    return out_folder


def _stats(plan: Plan, samples: Dict[str, int]) -> Dict[str, object]:
    split = {s.spk_id: s.split for s in plan.speakers}
    secs = {"train": [], "test": []}  # type: Dict[str, List[float]]
    for j in plan.jobs:
        secs[split[j.spk_id]].append(samples[j.rel_path] / SAMPLE_RATE)
    everything = secs["train"] + secs["test"]
    return {
        "train_speakers": sum(1 for s in plan.speakers if s.split == "train"),
        "train_transformed_speakers": sum(1 for s in plan.speakers if s.split == "train" and s.transform_cents),
        "train_persons": len({s.voice.person for s in plan.speakers if s.split == "train"}),
        "train_utterances": len(secs["train"]),
        "train_hours": round(sum(secs["train"]) / 3600, 3),
        "test_speakers": sum(1 for s in plan.speakers if s.split == "test"),
        "test_voices": sorted(s.voice.name for s in plan.speakers if s.split == "test"),
        "test_utterances": len(secs["test"]),
        "test_hours": round(sum(secs["test"]) / 3600, 3),
        "trials": len(plan.trials),
        "target_trials": sum(t.label for t in plan.trials),
        "min_seconds": round(min(everything), 2),
        "max_seconds": round(max(everything), 2),
        "mean_seconds": round(float(np.mean(everything)), 2),
    }


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI: ``python -m speechbrain_ssrl.data.minivox --size demo --out data/minivox_demo``."""
    ap = argparse.ArgumentParser(description="Build MiniVox, an offline VoxCeleb-shaped corpus of Debian voices.")
    ap.add_argument("--size", choices=sorted(SIZES), default="demo")
    ap.add_argument("--out", default=None, help="output folder (default: data/minivox_<size>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="parallel synthesis processes (default 2)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        build(a.out or os.path.join("data", f"minivox_{a.size}"), size=a.size, seed=a.seed, jobs=a.jobs)
    except (RuntimeError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"minivox: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
