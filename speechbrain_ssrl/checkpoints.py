"""Crash-safe checkpoints: atomic checkpoint folders and the random-number-generator state.

``AtomicCheckpointer`` is a drop-in ``speechbrain.utils.checkpoints.Checkpointer`` whose saves cannot
leave a half-written checkpoint behind:

* every checkpoint is written into a hidden folder ``.saving+<name>+<pid>`` next to the final one (the
  name does not start with ``CKPT``, so SpeechBrain's checkpoint discovery never sees it); its files
  are fsynced, then the folder is renamed to ``CKPT+...`` in one ``os.rename`` and the parent folder is
  fsynced. A SIGKILL or a power loss at any moment leaves either the complete new checkpoint or none;
* a failure while saving (``OSError`` such as ENOSPC, an exception in a saver) removes the hidden
  folder and raises ``CheckpointSaveError`` naming it and the previous checkpoint, which is untouched
  (old checkpoints are deleted only after the new one is complete);
* deletions first rename the folder out of sight (``.deleting+<name>``), so a kill during a deletion
  never leaves a partial ``CKPT+`` folder either;
* hidden folders left by killed runs are removed when the checkpointer is created;
* checkpoint meta values are turned into plain Python (numpy / torch scalars → ``float``/``int``):
  SpeechBrain reads ``CKPT.yaml`` with ``yaml.SafeLoader``.

``RNGState`` is a recoverable holding the states of Python's ``random``, NumPy's global generator and
torch's CPU and CUDA generators, so that a resumed run continues with the same random draws. The
loaded state is applied lazily by the Brain (``SSLBrainBase``), at the point where it was saved: at the
start of the next batch for an intra-epoch checkpoint, at the start of the next epoch for an
end-of-epoch one (DataLoader iterators draw from torch's generator when they are created).
"""

from __future__ import annotations

import errno
import logging
import numbers
import os
import pathlib
import random
import shutil
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from speechbrain.utils.checkpoints import (
    Checkpointer,
    ckpt_recency,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import ddp_barrier, ddp_broadcast, if_main_process

logger = logging.getLogger(__name__)

SAVING_PREFIX = ".saving+"
DELETING_PREFIX = ".deleting+"


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the previous checkpoint is intact."""


def plain_meta(meta: Dict[str, Any]) -> Dict[str, Any]:
    """``meta`` with numpy / torch scalars turned into Python numbers; raises on anything not YAML-safe."""

    def conv(key: str, v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise TypeError(f"checkpoint meta {key!r}: a tensor of shape {tuple(v.shape)} is not a scalar")
            v = v.item()
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (bool, str)) or v is None:
            return v
        if isinstance(v, numbers.Integral):
            return int(v)
        if isinstance(v, numbers.Real):
            return float(v)
        if isinstance(v, dict):
            return {str(k): conv(f"{key}.{k}", x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(f"{key}[{i}]", x) for i, x in enumerate(v)]
        raise TypeError(f"checkpoint meta {key!r}: {type(v).__name__} is not plain Python (use float/int/str)")

    return {str(k): conv(str(k), v) for k, v in (meta or {}).items()}


#: free bytes under which a failed write is put down to a full disk (torch reports ENOSPC as "unexpected pos")
_FULL_DISK_BYTES = 64 << 20


def _is_no_space(error: BaseException) -> bool:
    e: Optional[BaseException] = error
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        e = e.__cause__ or e.__context__
    return False


def describe_save_error(error: BaseException, folder) -> str:
    """What went wrong in a save, in words: "No space left on device (N MB free on <folder>)" when the disk
    is full (torch's zip writer says only "unexpected pos"), else the exception's type and message."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if _is_no_space(error) or (free is not None and free < _FULL_DISK_BYTES):
        where = f"{free / 2**20:.0f} MB free on {folder}" if free is not None else str(folder)
        return f"No space left on device ({where})"
    return f"{type(error).__name__}: {error}"


def _fsync_tree(folder: pathlib.Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(pathlib.Path(root))


def _fsync_dir(folder: pathlib.Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointer(Checkpointer):
    """``Checkpointer`` with atomic saves and deletions (see the module docstring); same arguments."""

    def __init__(self, checkpoints_dir, recoverables=None, custom_load_hooks=None, custom_save_hooks=None,
                 allow_partial_load=False, fsync: bool = True):
        super().__init__(checkpoints_dir, recoverables, custom_load_hooks, custom_save_hooks, allow_partial_load)
        self.fsync = bool(fsync)
        for key, obj in self.recoverables.items():  # checkpoints written before RNGState existed still load
            if isinstance(obj, RNGState):
                self.optional_recoverables[key] = True
        if if_main_process():
            self.clean_stale()

    # ------------------------------------------------------------------ housekeeping
    def clean_stale(self) -> List[str]:
        """Removes hidden ``.saving+*`` / ``.deleting+*`` folders left by killed runs; returns their paths."""
        removed = []
        for p in sorted(self.checkpoints_dir.iterdir()):
            if p.is_dir() and (p.name.startswith(SAVING_PREFIX) or p.name.startswith(DELETING_PREFIX)):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(str(p))
                logger.warning("removed %s, an unfinished checkpoint save/deletion of an interrupted run", p)
        return removed

    def _latest_description(self) -> str:
        try:
            ckpts = self.list_checkpoints()
        except Exception:  # noqa: BLE001 - only used in an error message
            return "the previous checkpoints are untouched"
        if not ckpts:
            return "there was no previous checkpoint"
        latest = max(ckpts, key=ckpt_recency)
        return f"the previous checkpoint {latest.path} is intact (a re-run of the same command resumes from it)"

    # ------------------------------------------------------------------ save
    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):  # noqa: B006
        from speechbrain.utils.checkpoints import Checkpoint, get_default_hook, DEFAULT_SAVE_HOOKS, PARAMFILE_EXT

        meta = plain_meta(meta)
        final = tmp = None
        error: Optional[BaseException] = None
        if if_main_process():
            final = self._new_checkpoint_dirpath() if name is None else self._custom_checkpoint_dirpath(name)
            tmp = final.parent / f"{SAVING_PREFIX}{final.name}+{os.getpid()}"
            try:
                if tmp.exists():
                    shutil.rmtree(tmp)
                os.makedirs(tmp)
                saved_meta = self._save_checkpoint_metafile(tmp / "CKPT.yaml", meta, end_of_epoch)
            except Exception as e:  # noqa: BLE001
                error = e
        tmp = ddp_broadcast(tmp, src=0)
        final = ddp_broadcast(final, src=0)

        paramfiles = {}
        if error is None:
            try:
                for key, obj in self.recoverables.items():
                    path = tmp / f"{key}{PARAMFILE_EXT}"
                    paramfiles[key] = final / f"{key}{PARAMFILE_EXT}"
                    if key in self.custom_save_hooks:
                        self.custom_save_hooks[key](obj, path)
                        continue
                    hook = get_default_hook(obj, DEFAULT_SAVE_HOOKS)
                    if hook is None:
                        raise RuntimeError(f"Don't know how to save {type(obj)} ({key}): register a save hook")
                    hook(obj, path)
            except Exception as e:  # noqa: BLE001
                error = e
        ddp_barrier()  # every rank has written its part
        if not if_main_process():
            if error is not None:
                raise CheckpointSaveError(f"saving checkpoint {final} failed on this process: {error}") from error
            return None
        if error is None:
            try:
                if self.fsync:
                    _fsync_tree(tmp)
                if final.exists():  # a named checkpoint saved again: swap it out of sight first
                    old = final.parent / f"{DELETING_PREFIX}{final.name}+{os.getpid()}"
                    os.rename(final, old)
                    os.rename(tmp, final)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.rename(tmp, final)
                if self.fsync:
                    _fsync_dir(final.parent)
            except Exception as e:  # noqa: BLE001
                error = e
        if error is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            what = describe_save_error(error, final.parent)
            raise CheckpointSaveError(
                f"could not write the checkpoint {final.name} into {final.parent} ({what}). The partial folder "
                f"{tmp} was removed; {self._latest_description()}. If the disk is full, free space (or point "
                "output_folder elsewhere) and re-run the same command."
            ) from error
        ckpt_type = "end-of-epoch" if end_of_epoch else "intra-epoch"
        logger.log(verbosity, f"Saved an {ckpt_type} checkpoint in {final}")
        return Checkpoint(final, saved_meta, paramfiles)

    # ------------------------------------------------------------------ delete
    def delete_checkpoints(self, *, num_to_keep=1, min_keys=None, max_keys=None, importance_keys=[ckpt_recency],  # noqa: B006
                           ckpt_predicate=None, verbosity=logging.INFO):
        """As ``Checkpointer.delete_checkpoints``, but a folder is renamed out of sight before removal."""
        if num_to_keep < 0:
            raise ValueError("Number of checkpoints to keep must be positive.")
        potential, protected = set(), set()
        keys = [{"min_key": k} for k in min_keys or []]
        keys += [{"max_key": k} for k in max_keys or []]
        keys += [{"importance_key": k} for k in importance_keys]
        for kw in keys:
            kw["ckpt_predicate"] = ckpt_predicate
            potential.update(self.find_checkpoints(**kw))
            protected.update(self.find_checkpoints(max_num_checkpoints=num_to_keep, **kw))
        ddp_barrier()
        if if_main_process():
            for ckpt in potential - protected:
                self._delete_atomically(ckpt.path, verbosity)
        ddp_barrier()

    def _delete_atomically(self, path, verbosity=logging.INFO) -> None:
        path = pathlib.Path(path)
        if not self._is_checkpoint_dir(path):
            raise RuntimeError(f"{path} does not look like a checkpoint; not deleting it")
        trash = path.parent / f"{DELETING_PREFIX}{path.name}+{os.getpid()}"
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        logger.log(verbosity, f"Deleted checkpoint in {path}")


# ---------------------------------------------------------------------- random number generators
@register_checkpoint_hooks
class RNGState:
    """Checkpointable states of ``random``, NumPy's global generator and torch (CPU + CUDA).

    Saved on the main process. A loaded state is kept pending until ``apply_pending(when)`` is called
    with ``when`` = ``"batch"`` (intra-epoch checkpoint) or ``"epoch"`` (end-of-epoch checkpoint);
    ``defer=False`` applies it at load time instead. Under DDP every rank gets the main process's
    state (``seed_everything`` gives all ranks the same seed anyway).
    """

    def __init__(self, defer: bool = True) -> None:
        self.defer = bool(defer)
        self._pending: Optional[Dict[str, Any]] = None
        self._pending_when: Optional[str] = None

    @staticmethod
    def capture() -> Dict[str, Any]:
        version, internal, gauss = random.getstate()
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
        cuda = []
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda = [s.clone() for s in torch.cuda.get_rng_state_all()]
        return {
            "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
            "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
            "torch": torch.get_rng_state().clone(),
            "cuda": cuda,
        }

    @staticmethod
    def restore(state: Dict[str, Any]) -> None:
        py = state["python"]
        random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
        npy = state["numpy"]
        np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
        torch.set_rng_state(state["torch"])
        cuda = state.get("cuda") or []
        if cuda and torch.cuda.is_available():
            n = min(len(cuda), torch.cuda.device_count())
            if n != len(cuda):
                logger.warning("the checkpoint holds %d CUDA generator states, %d devices visible", len(cuda), n)
            for i in range(n):
                torch.cuda.set_rng_state(cuda[i], device=i)

    @property
    def pending(self) -> Optional[str]:
        """``"batch"``, ``"epoch"`` or None: when the loaded state is due to be applied."""
        return self._pending_when if self._pending is not None else None

    def apply_pending(self, when: Optional[str] = None) -> bool:
        """Applies a loaded state if it is due at ``when`` (any time if None); returns whether it did."""
        if self._pending is None or (when is not None and when != self._pending_when):
            return False
        self.restore(self._pending)
        self._pending, self._pending_when = None, None
        return True

    @mark_as_saver
    def _save(self, path) -> None:
        torch.save(self.capture(), path)

    @mark_as_loader
    def _load(self, path, end_of_epoch) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        self._pending, self._pending_when = state, ("epoch" if end_of_epoch else "batch")
        if not self.defer:
            self.apply_pending()
