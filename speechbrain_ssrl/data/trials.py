"""Speaker-verification trial lists in VoxCeleb's ``veri_test2.txt`` format.

Each non-empty line reads ``<label> <enrol> <test>``: ``label`` is 1 (same speaker, a target trial)
or 0 (different speakers), and both paths are relative to a corpus' ``wav/`` folder, e.g.
``1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav``. The speaker of a file is the
first component of its path. With ``relative_to="root"`` (evaluate.py's ``trial_paths: root``) the paths
are relative to the data folder itself, in any layout and depth (``calls/2024/a.flac``, ``a.wav``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Set, Union

__all__ = [
    "Trial",
    "TrialListError",
    "read_trials",
    "write_trials",
    "trial_speakers",
    "trial_files",
    "split_data_folders",
    "in_data_folders",
    "resolve_trial_paths",
]

PathLike = Union[str, "os.PathLike[str]"]


class TrialListError(ValueError):
    """A trial list is malformed (the message names the file and the line)."""


@dataclass(frozen=True)
class Trial:
    """One verification trial: ``label`` 1 = same speaker, 0 = different speakers."""

    label: int
    enrol: str
    test: str

    @property
    def enrol_spk(self) -> str:
        """Speaker id of the enrolment file (first path component)."""
        return speaker_of(self.enrol)

    @property
    def test_spk(self) -> str:
        """Speaker id of the test file (first path component)."""
        return speaker_of(self.test)


def speaker_of(rel_path: str) -> str:
    """Speaker id of a ``spk/session/utt.wav`` path."""
    return rel_path.replace("\\", "/").split("/", 1)[0]


#: what trial paths are relative to: ``wav`` = ``<data_folder>/wav/<speaker>/<session>/<utt>`` (VoxCeleb),
#: ``root`` = ``<data_folder>/<any/depth/file>`` (any layout)
RELATIVE_TO = ("wav", "root")


def _check_relative_to(relative_to: str) -> str:
    if relative_to not in RELATIVE_TO:
        raise ValueError(f"trial_paths={relative_to!r}: pass wav (<data_folder>/wav/<speaker>/...) or root (<data_folder>/...)")
    return relative_to


def _check_rel_path(p: str, relative_to: str = "wav") -> Optional[str]:
    """Returns why ``p`` is not a valid relative trial path, or None when it is."""
    norm = p.replace("\\", "/")
    parts = norm.split("/")
    where = "<data_folder>/wav/" if relative_to == "wav" else "<data_folder>/"
    if norm.startswith("/") or (len(p) > 1 and p[1] == ":"):
        return f"path {p!r} is absolute; trial paths are relative to {where}"
    if ".." in parts:
        return f"path {p!r} contains '..'"
    if relative_to == "root":
        return f"path {p!r} has an empty component" if any(not c for c in parts) else None
    if len(parts) < 2 or any(not c for c in parts):
        return (f"path {p!r} is not of the form <speaker>/<session>/<utterance>.wav (for paths relative to the data "
                "folder in any layout pass trial_paths: root)")
    return None


def read_trials(path: PathLike, relative_to: str = "wav") -> List[Trial]:
    """Reads and validates a ``veri_test2.txt``-format trial list.

    ``relative_to``: ``wav`` (paths ``<speaker>/<session>/<utt>`` under ``<data_folder>/wav/``) or ``root``
    (paths of any depth under the data folder itself, e.g. ``calls/2024/a.flac`` or ``a.wav``).
    Blank lines and lines starting with ``#`` are ignored. Raises ``FileNotFoundError`` when the
    file is missing and :class:`TrialListError` naming the file and line for a malformed line, or
    when the list holds no trial.
    """
    path = os.fspath(path)
    _check_relative_to(relative_to)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"trial list {path} does not exist: pass the path of a veri_test2.txt-format file "
            "(for VoxCeleb1 download veri_test2.txt from the VoxCeleb site; MiniVox writes "
            "<minivox root>/veri_test2.txt)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as err:
        raise TrialListError(
            f"trial list {path} is not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at offset "
            f"{err.start}): it is not a veri_test2.txt-format list, or has another encoding. Fix: pass the right "
            "file, or convert it (iconv -t UTF-8)"
        ) from None
    trials: List[Trial] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{path}, line {lineno}"
        if len(fields) != 3:
            raise TrialListError(
                f"{where}: expected '<0|1> <enrol.wav> <test.wav>', got {line!r} "
                f"({len(fields)} fields); fix or remove that line"
            )
        label, enrol, test = fields
        if label not in ("0", "1"):
            raise TrialListError(f"{where}: the label must be 0 or 1, got {label!r}; fix that line")
        for p in (enrol, test):
            why = _check_rel_path(p, relative_to)
            if why:
                raise TrialListError(f"{where}: {why}; fix that line")
        trials.append(Trial(int(label), enrol.replace("\\", "/"), test.replace("\\", "/")))
    if not trials:
        raise TrialListError(f"trial list {path} holds no trial: it is empty or only has comments")
    return trials


def write_trials(trials: Iterable[Trial], path: PathLike) -> None:
    """Writes trials in ``veri_test2.txt`` format (atomically)."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for t in trials:
            f.write(f"{t.label} {t.enrol} {t.test}\n")
    os.replace(tmp, path)


def trial_speakers(trials: Iterable[Trial]) -> Set[str]:
    """All speaker ids named on either side of the trials."""
    out: Set[str] = set()
    for t in trials:
        out.add(t.enrol_spk)
        out.add(t.test_spk)
    return out


def trial_files(trials: Iterable[Trial]) -> List[str]:
    """The distinct relative paths of the trials, in order of first appearance."""
    seen: Dict[str, None] = {}
    for t in trials:
        seen.setdefault(t.enrol, None)
        seen.setdefault(t.test, None)
    return list(seen)


def split_data_folders(data_folders: Union[PathLike, Sequence[PathLike]]) -> List[str]:
    """One or several corpus roots: a path, a comma-separated string of paths, or a list."""
    if isinstance(data_folders, (str, os.PathLike)):
        items = [s for s in os.fspath(data_folders).split(",")]
    else:
        items = [os.fspath(d) for d in data_folders]
    roots = [os.path.abspath(os.path.expanduser(s.strip())) for s in items if s and s.strip()]
    if not roots:
        raise ValueError("no data folder given: pass a corpus root (or several, comma-separated)")
    return roots


def in_data_folders(data_folders: Union[PathLike, Sequence[PathLike]], name: PathLike, subfolders: Sequence[str] = ("", "meta")) -> str:
    """Where ``name`` (a file or folder) is in the data folder(s): the first ``<root>/<sub>/<name>`` that
    exists, roots in the order given and, in each root, ``subfolders`` in order (default: the root itself,
    then its ``meta/``); when none has it, ``<first root>/<name>`` (what ``<data_folder>/<name>`` gave for a
    single root, so that the consumer names the missing path). An absolute ``name`` is returned as it is.

    For recipe yaml defaults that also work with several comma-separated roots, where
    ``!ref <data_folder>/veri_test2.txt`` would give ``/a,/b/veri_test2.txt``::

        verification_file: !apply:speechbrain_ssrl.data.trials.in_data_folders [!ref <data_folder>, veri_test2.txt]
    """
    name = os.fspath(name)
    if os.path.isabs(name):
        return name
    roots = split_data_folders(data_folders)
    for root in roots:
        for sub in subfolders:
            cand = os.path.join(root, sub, name) if sub else os.path.join(root, name)
            if os.path.exists(cand):
                return cand
    return os.path.join(roots[0], name)


def resolve_trial_paths(
    trials: Iterable[Trial],
    data_folders: Union[PathLike, Sequence[PathLike]],
    trials_file: Optional[PathLike] = None,
    relative_to: str = "wav",
) -> Dict[str, str]:
    """Maps each relative trial path to an existing ``<root>/wav/<path>`` file (``<root>/<path>`` when
    ``relative_to="root"``).

    Roots are tried in order; the first that holds the file wins. Raises ``FileNotFoundError``
    listing the missing files (and naming ``trials_file`` when given) if any path is found in no
    root.
    """
    roots = split_data_folders(data_folders)
    sub = ("wav",) if _check_relative_to(relative_to) == "wav" else ()
    resolved: Dict[str, str] = {}
    missing: List[str] = []
    for rel in trial_files(trials):
        for root in roots:
            cand = os.path.join(root, *sub, *rel.split("/"))
            if os.path.isfile(cand):
                resolved[rel] = cand
                break
        else:
            missing.append(rel)
    if missing:
        src = f"the trial list {os.fspath(trials_file)}" if trials_file else "the trial list"
        shown = "\n  ".join(missing[:20])
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        where = ", ".join(os.path.join(r, *sub) for r in roots)
        fix = (
            "Fix: point data_folder at the corpus (or corpora, comma-separated) the trial list belongs "
            "to, e.g. the VoxCeleb1 root that holds wav/id10270/..., or use the matching trial list."
            if sub else "Fix: point data_folder at the folder the trial list's paths are relative to."
        )
        raise FileNotFoundError(f"{len(missing)} file(s) named by {src} do not exist under {where}:\n  {shown}{more}\n{fix}")
    return resolved
