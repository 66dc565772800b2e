"""Refusals before any training work, with messages that say what is wrong and how to fix it.

``train.py`` calls, in this order, all before anything is written into the output folder:

* ``load_hparams(hparams_file, overrides)``: an unknown top-level key on the command line
  (``--K_0=...``) is refused, naming the key and the closest yaml keys (hyperpyyaml 1.2.3 raises a bare
  ``KeyError`` traceback; keys inside a dict value, e.g. new DataLoader options, are allowed);
  ``check_settings``: ``number_of_epochs`` < 1 (DINO: unless ``export_untrained``), ``batch_size`` < 1
  and ``K0`` < 2 are refused, before the yaml is loaded (which fails on e.g. ``K0=-1``) and after;
* ``check_before_start(hparams)``: a ``dino_folder`` without a usable teacher (missing, unreadable,
  another architecture, exported untrained, or a training folder with no trained epoch) is refused; on
  a resume (a checkpoint exists in ``save_folder``) the architecture keys, ``K0`` and ``queue_length``
  must equal those saved in ``save_folder/run_settings.json`` at the first start, or the run is refused;
  ``check_data_paths``: a ``verification_file`` (when the VoxCeleb preparation needs it) or a
  ``noise_folder`` / ``rir_folder`` (when its CSV key is set) that does not exist is refused, naming the key;
* on the prepared training CSV (``train.py`` prepares into a staging folder first),
  ``check_training_data(hparams, csv_path, write=False)``: ``K0`` or ``batch_size`` larger than the
  number of training utterances is refused; on a resume, the number of utterances N and a digest of the
  training CSV's ``ID`` column (in order) must match too (a different data folder is refused). Called
  again once the preparation is adopted, it writes ``run_settings.json`` at a fresh start.

Every refusal raises ``RefusedError``, a ``SystemExit``: the message is printed without a traceback and
the exit status is 1. ``run_script`` ends the recipe scripts' other input problems (``OSError``,
``ValueError``, ``ExportError``) with one line too; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import ast
import copy
import difflib
import hashlib
import json
import logging
import os
import re
import traceback
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

from speechbrain_ssrl.export import RECIPE_ARCH_KEYS, ExportError

logger = logging.getLogger(__name__)

SETTINGS_FILE = "run_settings.json"
#: hparams whose change makes a checkpoint unusable (architecture, number of prototypes, queue shape)
SETTINGS_KEYS = ("stage", "n_mels", "emb_dim") + RECIPE_ARCH_KEYS + (
    "n_prototypes",
    "head_hidden",
    "head_bottleneck",
    "K0",
    "queue_length",
)
DATA_KEYS = ("N", "train_ids_sha1")


class RefusedError(SystemExit):
    """The recipe refuses to start; ``str(e)`` is the message (exit status 1)."""

    def __init__(self, message: str, program: str = "train.py") -> None:
        super().__init__(f"{program} refused to start: {message}")
        self.message = message

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------------- command-line keys
_TOP_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:", re.M)


def yaml_top_level_keys(text: str) -> List[str]:
    """Top-level keys of a hyperpyyaml text (lines ``key:`` at column 0)."""
    return list(dict.fromkeys(_TOP_KEY.findall(text)))


def _yaml_tree(text: str) -> Optional[Mapping]:
    """The yaml's key structure, custom tags kept as-is (ruamel round-trip loader); None if unreadable."""
    try:
        import ruamel.yaml

        tree = ruamel.yaml.YAML(typ="rt").load(text)
    except Exception:  # noqa: BLE001 - fall back to the top-level keys
        return None
    return tree if isinstance(tree, Mapping) else None


def _unknown_paths(overrides: Mapping, tree: Mapping) -> List[tuple]:
    """(key, the yaml's keys) for every top-level override key absent from the yaml.

    Keys inside a dict value (``--dataloader_options={pin_memory: True}``) may legitimately be new
    (DataLoader options, extra recoverables) and are left to hyperpyyaml, which adds them.
    """
    return [(str(k), [str(x) for x in tree]) for k in overrides if k not in tree]


def _parse_overrides(overrides: Union[str, Mapping, None]) -> Mapping:
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        return overrides
    tree = _yaml_tree(overrides)
    if tree is not None:
        return tree
    return {k: None for k in yaml_top_level_keys(overrides)}


def _unknown_key_message(key: str, known: Iterable[str], where: str) -> str:
    """``key``: ``name`` (top level) or ``a.b.name`` (inside the dict given as ``--a=...``)."""
    parent, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, list(known), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    what = f"--{leaf} is not a key of {where}" if not parent else (
        f"{leaf!r} (in --{parent.split('.')[0]}=...) is not a key of {parent} in {where}"
    )
    return (
        f"{what}.{hint} Unknown keys are refused instead of being silently added; run options "
        "(--device, --precision, --ckpt_interval_steps, ...) are listed by `python train.py --help`."
    )


def check_overrides(hparams_file: str, overrides: Union[str, Mapping, None], program: str = "train.py") -> None:
    """Refuses a command-line key that is not a top-level key of the yaml (hyperpyyaml 1.2.3 raises a
    bare ``KeyError: "Override 'x' not found in: [...]"`` traceback for it)."""
    with open(hparams_file, encoding="utf-8") as f:
        text = f.read()
    tree = _yaml_tree(text)
    if tree is None:
        tree = {k: None for k in yaml_top_level_keys(text)}
    if isinstance(overrides, str):
        given = _TOP_KEY.findall(overrides)
        twice = sorted({k for k in given if given.count(k) > 1})
        if twice:
            raise RefusedError(
                " ".join(f"--{k} is given {given.count(k)} times on the command line; keep one." for k in twice), program
            )
    unknown = _unknown_paths(_parse_overrides(overrides), tree)
    if unknown:
        raise RefusedError(" ".join(_unknown_key_message(k, known, hparams_file) for k, known in unknown), program)


# ---------------------------------------------------------------------- degenerate settings
def _int_setting(values: Mapping[str, Any], key: str) -> Optional[int]:
    """``values[key]`` as an int when it is a plain number (a ``!ref`` or a missing key gives None)."""
    v = values.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return int(v)


def check_settings(values: Mapping[str, Any], program: str = "train.py") -> None:
    """Refuses settings that cannot train: ``number_of_epochs`` < 1 (DINO: unless ``export_untrained``),
    ``batch_size`` < 1, ``K0`` < 2. ``values``: the loaded hparams, or the yaml's plain values with the
    command line's (before loading, which fails with a bare traceback on e.g. ``K0=-1``)."""
    epochs, batch, k0 = (_int_setting(values, k) for k in ("number_of_epochs", "batch_size", "K0"))
    dino = values.get("stage") == "dino"
    if epochs is not None and epochs < 1 and not (dino and values.get("export_untrained") is True):
        fix = (
            "; to export the untrained encoder (a random-init yardstick) pass --export_untrained=True"
            if dino else " (to start from the DINO teacher as it is, evaluate --dino_folder's pretrained/ instead)"
        )
        raise RefusedError(f"--number_of_epochs={epochs}: nothing would be trained. Fix: pass a number >= 1{fix}.", program)
    if batch is not None and batch < 1:
        raise RefusedError(f"--batch_size={batch}: a batch needs at least one utterance. Fix: pass --batch_size >= 1.", program)
    if k0 is not None and not dino and k0 < 2:
        raise RefusedError(
            f"--K0={k0}: pseudo labels need at least 2 clusters (with one, every utterance has the same label and "
            "the loss is 0). Fix: pass --K0 of a few times the expected number of speakers.", program
        )


def _plain_values(text: str, overrides: Union[str, Mapping, None]) -> Dict[str, Any]:
    """The yaml's top-level plain values with the command line's on top (tags such as ``!ref`` left out)."""
    out: Dict[str, Any] = {}
    for tree in (_yaml_tree(text) or {}, _parse_overrides(overrides)):
        for k, v in tree.items():
            if isinstance(v, (bool, int, float, str)) or v is None:
                out[str(k)] = v
    return out


def load_hparams(hparams_file: str, overrides: Union[str, Mapping, None] = None, program: str = "train.py") -> Dict[str, Any]:
    """``load_hyperpyyaml`` after ``check_overrides`` and ``check_settings``; an unknown nested key is refused
    the same way. Degenerate settings are checked before loading (a yaml that builds a model of K0 < 1
    classes fails inside the load) and again on the loaded values (``!ref`` keys)."""
    from hyperpyyaml import load_hyperpyyaml

    check_overrides(hparams_file, overrides, program)
    with open(hparams_file, encoding="utf-8") as fin:
        check_settings(_plain_values(fin.read(), overrides), program)
    with open(hparams_file, encoding="utf-8") as fin:
        try:
            hparams = load_hyperpyyaml(fin, overrides)
        except KeyError as e:
            m = re.match(r"Override '(.+?)' not found in: (\[.*\])", str(e.args[0]) if e.args else "")
            if not m:
                raise
            try:
                known = ast.literal_eval(m.group(2))
            except (ValueError, SyntaxError):
                known = []
            raise RefusedError(_unknown_key_message(m.group(1), known, hparams_file), program) from None
    check_settings(hparams, program)
    return hparams


# ---------------------------------------------------------------------- teacher of stage 1
def check_teacher(hparams: Mapping[str, Any]) -> Optional[str]:
    """For stages that start from a DINO run: ``dino_folder`` must hold a teacher that fits ``embedding_model``."""
    folder = hparams.get("dino_folder")
    if hparams.get("stage") == "dino" or not folder:
        return None
    from speechbrain_ssrl.brains.base import load_encoder

    try:
        path = load_encoder(folder, copy.deepcopy(hparams["embedding_model"]))
    except FileNotFoundError as e:
        raise RefusedError(str(e).strip('"')) from None
    except Exception as e:  # noqa: BLE001 - unreadable file or another architecture
        raise RefusedError(f"--dino_folder={folder}: no usable teacher: {e}") from None
    why = untrained_teacher(path)
    if why:
        raise RefusedError(
            f"--dino_folder={folder}: {why}. Fix: point --dino_folder at a DINO run that trained at least one epoch "
            "(python train.py hparams/dino_ecapa.yaml ...)."
        )
    return path


TRAINING_INFO_KEY = "training"


def untrained_teacher(ckpt: str) -> Optional[str]:
    """Why the teacher checkpoint ``ckpt`` (as found by ``find_encoder_checkpoint``) is not a trained DINO
    teacher, or None: its export says ``untrained`` (``export_untrained: True``), or it belongs to a training
    output folder whose ``history.csv`` has no trained epoch (e.g. ``number_of_epochs: 0``). A bare
    checkpoint outside a training output folder (``embedding_model.ckpt`` alone) is taken as given."""
    folder = os.path.dirname(os.path.abspath(ckpt))
    info_path = os.path.join(folder, "export_info.json")
    if os.path.isfile(info_path):
        try:
            with open(info_path, encoding="utf-8") as f:
                info = json.load(f).get(TRAINING_INFO_KEY) or {}
        except (OSError, ValueError, AttributeError):
            info = {}
        if info.get("untrained"):
            return f"{folder} was exported untrained (export_untrained: True, the random-init yardstick), not by DINO training"
    if os.path.basename(folder) == "pretrained":
        run = os.path.dirname(folder)
    elif os.path.basename(folder).startswith("CKPT+") and os.path.basename(os.path.dirname(folder)) == "save":
        run = os.path.dirname(os.path.dirname(folder))
    else:
        run = folder
    if not any(os.path.exists(os.path.join(run, n)) for n in ("history.csv", "hyperparams.yaml", "save")):
        return None  # not a training output folder
    history = os.path.join(run, "history.csv")
    if not _has_trained_epoch(history):
        return f"{run} has no DINO training history ({history} lists no trained epoch): its encoder was never trained"
    return None


def _has_trained_epoch(history_csv: str) -> bool:
    import csv

    try:
        with open(history_csv, newline="", encoding="utf-8") as f:
            return any(_as_int(r.get("epoch")) >= 1 for r in csv.DictReader(f))
    except OSError:
        return False


def _as_int(v: Any) -> int:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return -1


# ---------------------------------------------------------------------- training data and resume
def csv_ids(csv_path: str) -> List[str]:
    from speechbrain_ssrl.data.views import read_csv_rows

    return [r["ID"] for r in read_csv_rows(csv_path)]


def ids_digest(ids: Iterable[str]) -> str:
    """SHA-1 of the IDs in CSV order (pseudo labels are indexed by the row)."""
    h = hashlib.sha1()
    for i in ids:
        h.update(i.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    return str(v)


def model_settings(hparams: Mapping[str, Any]) -> Dict[str, Any]:
    """The hparams a checkpoint depends on (architecture keys, K0, queue length), JSON-ready."""
    return {k: _plain(hparams[k]) for k in SETTINGS_KEYS if k in hparams}


def run_settings(hparams: Mapping[str, Any], ids: Optional[List[str]] = None) -> Dict[str, Any]:
    """``model_settings`` plus N and the digest of the training CSV's IDs."""
    out = model_settings(hparams)
    ids = csv_ids(hparams["train_annotation"]) if ids is None else ids
    out["N"] = len(ids)
    out["train_ids_sha1"] = ids_digest(ids)
    return out


def has_checkpoint(save_folder: str) -> bool:
    if not os.path.isdir(save_folder):
        return False
    return any(
        d.startswith("CKPT") and os.path.isfile(os.path.join(save_folder, d, "CKPT.yaml")) for d in os.listdir(save_folder)
    )


def check_k0(k0: int, n: int, csv_path: str = "the training CSV") -> None:
    if int(k0) > int(n):
        raise RefusedError(
            f"K0={k0} is larger than the number of training utterances N={n} in {csv_path}: k-means cannot make "
            f"more clusters than points. Fix: pass --K0=<at most {n}> (a small multiple of the expected number of "
            "speakers) or train on more data."
        )


def saved_settings(save_folder: str) -> Optional[Dict[str, Any]]:
    """``run_settings.json`` of a run that has a checkpoint to resume from, else None."""
    path = os.path.join(save_folder, SETTINGS_FILE)
    if not (has_checkpoint(save_folder) and os.path.isfile(path)):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def compare_settings(saved: Mapping[str, Any], now: Mapping[str, Any], save_folder: str, model_only: bool = False) -> None:
    """Refuses a resume whose settings differ from the saved ones, naming the keys."""
    keys = sorted(set(saved) | set(now), key=lambda k: (k in DATA_KEYS, k))
    if model_only:
        keys = [k for k in keys if k not in DATA_KEYS]
    diff = [k for k in keys if saved.get(k) != now.get(k)]
    if not diff:
        return
    model = [k for k in diff if k not in DATA_KEYS]
    data = [k for k in diff if k in DATA_KEYS]
    lines = []
    if model:
        lines.append(
            "the settings changed since this run started: "
            + "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now" for k in model)
        )
    if data:
        what = f"N={saved.get('N')} in the checkpoint, N={now.get('N')} now" if "N" in data else "same N, other IDs or order"
        lines.append(
            f"the training CSV does not match the one the checkpoint was trained on ({what}): "
            "the data_folder (or the data preparation) changed"
        )
    raise RefusedError(
        f"cannot resume from the checkpoint in {save_folder}: " + "; and ".join(lines) + ". Fix: restore the original "
        f"settings / --data_folder (saved in {os.path.join(save_folder, SETTINGS_FILE)}), or start a new run with "
        "another --output_folder."
    )


def check_data_paths(hparams: Mapping[str, Any]) -> None:
    """The trial list and the augmentation folders a run reads exist, or the run is refused naming the key.

    Checked only where the key is set and used: ``verification_file`` by the VoxCeleb preparation (not with
    ``skip_prep``), ``noise_folder`` / ``rir_folder`` when ``noise_csv`` / ``rir_csv`` is set. Left to the
    preparation (which names it) when a data folder itself is missing. The recipe yamls' defaults look for
    each name in every data folder (``data.trials.in_data_folders``)."""
    from speechbrain_ssrl.data.trials import split_data_folders

    try:
        roots = split_data_folders(hparams["data_folder"]) if hparams.get("data_folder") else []
    except ValueError:
        roots = []
    if not roots or not all(os.path.isdir(r) for r in roots):
        return
    needed = []
    if "verification_file" in hparams and not hparams.get("skip_prep") and hparams.get("data_format", "voxceleb") == "voxceleb":
        needed.append(("verification_file", "file", "veri_test2.txt", "a trial list in veri_test2.txt format"))
    for key, csv_key, name, what in (
        ("noise_folder", "noise_csv", "noise", "a folder of noise wavs, e.g. MUSAN"),
        ("rir_folder", "rir_csv", "rir", "a folder of room impulse responses, e.g. RIRS_NOISES/simulated_rirs"),
    ):
        if key in hparams and hparams.get(csv_key):
            needed.append((key, "folder", name, what))
    for key, kind, name, what in needed:
        path = hparams.get(key)
        found = bool(path) and (os.path.isfile if kind == "file" else os.path.isdir)(os.fspath(path))
        if not found:
            raise RefusedError(
                f"--{key}={path}: no such {kind}. The recipe's default is {name} in the first data folder (or its "
                f"meta/) that has it: none of {', '.join(roots)} has one. Fix: pass --{key}=<{what}>."
            )


def check_before_start(hparams: Mapping[str, Any]) -> None:
    """Refusals that need no data: a missing trial list or augmentation folder, an unusable ``dino_folder``,
    a resume with another architecture / K0."""
    check_data_paths(hparams)
    saved = saved_settings(hparams["save_folder"])
    if saved is not None:
        compare_settings(saved, model_settings(hparams), hparams["save_folder"], model_only=True)
    check_teacher(hparams)


def check_batch_size(batch_size: int, n: int, csv_path: str = "the training CSV", world_size: int = 1) -> None:
    """A batch of ``batch_size`` per process must fit in the ``n`` utterances (the last partial batch is dropped)."""
    per_process = int(n) // max(int(world_size), 1)
    if int(batch_size) > per_process:
        shared = f" shared by {world_size} processes" if world_size > 1 else ""
        raise RefusedError(
            f"--batch_size={batch_size} is larger than the {per_process} training utterances{shared} of {csv_path}: "
            f"an epoch would have no batch (incomplete batches are dropped). Fix: pass --batch_size=<at most "
            f"{per_process}> or train on more data."
        )


def _world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_training_data(hparams: Mapping[str, Any], csv_path: Optional[str] = None, write: bool = True) -> Dict[str, Any]:
    """K0 ≤ N, batch_size ≤ N, and on a resume the saved ``run_settings.json`` must match; writes it at a
    fresh start (``write``). ``csv_path``: the training CSV to check (default ``train_annotation``, e.g. a
    CSV prepared into a staging folder before it replaces the run's)."""
    from speechbrain.utils.distributed import ddp_barrier, if_main_process

    csv_path = csv_path or hparams["train_annotation"]
    ids = csv_ids(csv_path)
    if "K0" in hparams and hparams.get("stage") != "dino":
        check_k0(hparams["K0"], len(ids), csv_path)
    if _int_setting(hparams, "batch_size") is not None:
        check_batch_size(hparams["batch_size"], len(ids), csv_path, _world_size())
    now = run_settings(hparams, ids)
    save_folder = hparams["save_folder"]
    path = os.path.join(save_folder, SETTINGS_FILE)
    resuming = has_checkpoint(save_folder)
    saved = saved_settings(save_folder)
    if saved is not None:
        compare_settings(saved, now, save_folder)
    elif not write:
        return now
    elif if_main_process():
        if resuming:
            logger.warning("%s has checkpoints but no %s (an older run): writing it, resume not checked", save_folder, SETTINGS_FILE)
        os.makedirs(save_folder, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(now, f, indent=1)
        os.replace(tmp, path)
    ddp_barrier()
    return now


# ---------------------------------------------------------------------- one line per refusal
def run_script(main: Callable[[List[str]], Any], argv: List[str], program: str) -> Any:
    """Runs a recipe script's ``main(argv)``: a refusal (``RefusedError``) or a problem with the inputs (a
    missing / unreadable file or folder: ``OSError``; a malformed file or value: ``ValueError``, e.g. a
    trial list, a bad test file; an unusable model folder: ``ExportError``) ends with one line naming it and exit status 1; ``--debug`` shows the
    traceback instead. Other errors (bugs, a crash in training) keep their traceback."""
    debug = "--debug" in argv
    try:
        return main(argv)
    except RefusedError:
        if debug:
            traceback.print_exc()
        raise
    except (OSError, ValueError, ExportError) as e:
        if debug:
            raise
        logger.debug("%s stopped", program, exc_info=True)
        what = "" if isinstance(e, (FileNotFoundError, ValueError)) else f"{type(e).__name__}: "
        text = str(e).strip().strip('"') or type(e).__name__
        raise SystemExit(f"{program} stopped: {what}{text} (--debug shows the traceback)") from None
