"""Refusals before any training work, with messages that say what is wrong and how to fix it.

``train.py`` calls, in this order:

* ``load_hparams(hparams_file, overrides)``: an unknown top-level key on the command line
  (``--K_0=...``) is refused, naming the key and the closest yaml keys (hyperpyyaml 1.2.3 raises a bare
  ``KeyError`` traceback; keys inside a dict value, e.g. new DataLoader options, are allowed);
* ``check_before_start(hparams)`` (before the experiment folder is touched): a ``dino_folder`` without
  a usable teacher (missing, unreadable, or another architecture) is refused; on a resume (a checkpoint
  exists in ``save_folder``) the architecture keys, ``K0`` and ``queue_length`` must equal those saved in
  ``save_folder/run_settings.json`` at the first start, or the run is refused naming the keys;
* after the data preparation, ``check_training_data(hparams)``: ``K0`` larger than the number of
  training utterances is refused; on a resume, the number of utterances N and a digest of the training
  CSV's ``ID`` column (in order) must match too (a different data folder is refused); at a fresh start
  it writes ``run_settings.json``.

Every refusal raises ``RefusedError``, a ``SystemExit``: the message is printed without a traceback and
the exit status is 1.
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
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from speechbrain_ssrl.export import RECIPE_ARCH_KEYS

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

    def __init__(self, message: str) -> None:
        super().__init__(f"train.py refused to start: {message}")
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


def check_overrides(hparams_file: str, overrides: Union[str, Mapping, None]) -> None:
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
                " ".join(f"--{k} is given {given.count(k)} times on the command line; keep one." for k in twice)
            )
    unknown = _unknown_paths(_parse_overrides(overrides), tree)
    if unknown:
        raise RefusedError(
            " ".join(_unknown_key_message(k, known, hparams_file) for k, known in unknown)
        )


def load_hparams(hparams_file: str, overrides: Union[str, Mapping, None] = None) -> Dict[str, Any]:
    """``load_hyperpyyaml`` after ``check_overrides``; an unknown nested key is refused the same way."""
    from hyperpyyaml import load_hyperpyyaml

    check_overrides(hparams_file, overrides)
    with open(hparams_file, encoding="utf-8") as fin:
        try:
            return load_hyperpyyaml(fin, overrides)
        except KeyError as e:
            m = re.match(r"Override '(.+?)' not found in: (\[.*\])", str(e.args[0]) if e.args else "")
            if not m:
                raise
            try:
                known = ast.literal_eval(m.group(2))
            except (ValueError, SyntaxError):
                known = []
            raise RefusedError(_unknown_key_message(m.group(1), known, hparams_file)) from None


# ---------------------------------------------------------------------- teacher of stage 1
def check_teacher(hparams: Mapping[str, Any]) -> Optional[str]:
    """For stages that start from a DINO run: ``dino_folder`` must hold a teacher that fits ``embedding_model``."""
    folder = hparams.get("dino_folder")
    if hparams.get("stage") == "dino" or not folder:
        return None
    from speechbrain_ssrl.brains.base import load_encoder

    try:
        return load_encoder(folder, copy.deepcopy(hparams["embedding_model"]))
    except FileNotFoundError as e:
        raise RefusedError(str(e).strip('"')) from None
    except Exception as e:  # noqa: BLE001 - unreadable file or another architecture
        raise RefusedError(f"--dino_folder={folder}: no usable teacher: {e}") from None


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


def check_before_start(hparams: Mapping[str, Any]) -> None:
    """Refusals that need no data: an unusable ``dino_folder``, a resume with another architecture / K0."""
    saved = saved_settings(hparams["save_folder"])
    if saved is not None:
        compare_settings(saved, model_settings(hparams), hparams["save_folder"], model_only=True)
    check_teacher(hparams)


def check_training_data(hparams: Mapping[str, Any]) -> Dict[str, Any]:
    """K0 ≤ N, and on a resume the saved ``run_settings.json`` must match; writes it at a fresh start."""
    from speechbrain.utils.distributed import ddp_barrier, if_main_process

    csv_path = hparams["train_annotation"]
    ids = csv_ids(csv_path)
    if "K0" in hparams and hparams.get("stage") != "dino":
        check_k0(hparams["K0"], len(ids), csv_path)
    now = run_settings(hparams, ids)
    save_folder = hparams["save_folder"]
    path = os.path.join(save_folder, SETTINGS_FILE)
    resuming = has_checkpoint(save_folder)
    saved = saved_settings(save_folder)
    if saved is not None:
        compare_settings(saved, now, save_folder)
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
