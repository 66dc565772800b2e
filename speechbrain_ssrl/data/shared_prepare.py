"""SpeechBrain's shared VoxCeleb preparation as the source of the training file list.

In a SpeechBrain checkout this recipe sits at ``recipes/VoxCeleb/SSRL``, one folder below SpeechBrain's
shared ``recipes/VoxCeleb/voxceleb_prepare.py`` (the one ``SpeakerRec`` and ``SpeakerDiarization`` use).
The recipe then takes its training files from that script, called with whole-utterance rows
(``random_segment=True``) and no validation split (``split_ratio=[100, 0]``); the rows it writes keep
SpeechBrain's schema ``ID,duration,wav,start,stop,spk_id``. ``prepare_voxceleb`` (``data.voxceleb``)
then applies the same checks as to its own file list, so the two sources give the same ``train.csv``:

* the speakers on *both* sides of the trial list are left out (SpeechBrain's drops the enrolment side's);
* bad files (unreadable, truncated, too short, wrong rate) are skipped and listed (SpeechBrain's would
  stop at the first file it cannot read, and keeps short ones);
* the rows are in the path order of our own listing (SpeechBrain's shuffles them) and durations come
  from the file headers.

SpeechBrain's script draws from Python's global ``random`` (its shuffle): the state is restored after
the call, so the training run's seeding is not shifted by the choice of preparation.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import random
import shutil
import tempfile
from typing import Callable, List, Optional, Sequence, Tuple

__all__ = ["SHARED_FILE", "MODES", "shared_prepare_path", "resolve_shared_prepare", "load_shared_prepare",
           "speechbrain_train_files"]

SHARED_FILE = "voxceleb_prepare.py"
MODES = ("auto", "speechbrain", "ssrl")


def shared_prepare_path(recipe_dir: str) -> Optional[str]:
    """SpeechBrain's shared ``voxceleb_prepare.py`` one folder above ``recipe_dir``, if there is one."""
    path = os.path.join(os.path.dirname(os.path.abspath(recipe_dir)), SHARED_FILE)
    return path if os.path.isfile(path) else None


def resolve_shared_prepare(mode: str, recipe_dir: str) -> Optional[str]:
    """The shared file to take the training list from for yaml key ``voxceleb_prepare`` (``auto``: the
    shared file when the recipe sits in a SpeechBrain checkout, else ours; ``speechbrain``: the shared file
    or a refusal; ``ssrl``: ours), or None for our own listing."""
    mode = str(mode).strip().lower()
    if mode not in MODES:
        raise ValueError(f"voxceleb_prepare: {mode!r} is not one of {', '.join(MODES)} (see the yaml's comment)")
    if mode == "ssrl":
        return None
    path = shared_prepare_path(recipe_dir)
    if path is None and mode == "speechbrain":
        expected = os.path.join(os.path.dirname(os.path.abspath(recipe_dir)), SHARED_FILE)
        raise FileNotFoundError(
            f"voxceleb_prepare: speechbrain needs SpeechBrain's shared {expected} (the recipe must sit in "
            "recipes/VoxCeleb/SSRL of a SpeechBrain checkout). Fix: set voxceleb_prepare: auto or ssrl"
        )
    return path


def load_shared_prepare(path: str) -> Callable[..., object]:
    """``prepare_voxceleb`` of the shared file (imported under its own module name, so it cannot shadow
    the recipe's ``voxceleb_prepare`` module)."""
    spec = importlib.util.spec_from_file_location("speechbrain_shared_voxceleb_prepare", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} cannot be imported. Fix: set voxceleb_prepare: ssrl")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, "prepare_voxceleb", None)
    if not callable(fn):
        raise ImportError(f"{path} has no prepare_voxceleb(). Fix: set voxceleb_prepare: ssrl")
    return fn


def _relative_to_root(path: str, roots: Sequence[str]) -> Optional[Tuple[int, str]]:
    full = os.path.abspath(path)
    for i, root in enumerate(roots):
        wav_dir = os.path.join(os.path.abspath(root), "wav") + os.sep
        if full.startswith(wav_dir):
            return i, full[len(wav_dir):].replace(os.sep, "/")
    return None


def speechbrain_train_files(
    path: str, roots: Sequence[str], trials_path: str, work_parent: str
) -> List[Tuple[str, str]]:
    """(``spk/video/utt.wav``, absolute path) of every row of the ``train.csv`` that the shared
    ``prepare_voxceleb`` at ``path`` writes for ``roots`` (one row per file, no dev split), in the order of
    ``data.voxceleb.find_wavs`` (root by root, paths sorted). Its CSV is written into a temporary folder
    under ``work_parent`` and removed."""
    prepare = load_shared_prepare(path)
    os.makedirs(work_parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".speechbrain_prepare-", dir=work_parent)
    state = random.getstate()
    try:
        prepare(data_folder=",".join(os.path.abspath(r) for r in roots), save_folder=work,
                verification_pairs_file=os.path.abspath(trials_path), splits=["train"], split_ratio=[100, 0],
                random_segment=True)
        csv_path = os.path.join(work, "train.csv")
        if not os.path.isfile(csv_path):
            raise FileNotFoundError(f"{path} wrote no train.csv. Fix: set voxceleb_prepare: ssrl")
        with open(csv_path, newline="", encoding="utf-8") as f:
            wavs = [row["wav"] for row in csv.DictReader(f)]
    finally:
        random.setstate(state)
        shutil.rmtree(work, ignore_errors=True)
    found = {}
    for w in wavs:
        where = _relative_to_root(w, roots)
        if where is None:
            raise ValueError(f"{path} listed {w}, which is under no wav/ folder of {', '.join(roots)}")
        found.setdefault(where, os.path.abspath(w))
    return [(rel, found[(i, rel)]) for i, rel in sorted(found)]
