"""Wiring shared by the DINO, SSRL and iterative-baseline brains.

* the front end (Fbank 80 + sentence mean normalisation, computed in fp32) and ``embed``;
* the EMA teacher, kept OUT of ``modules`` (no optimiser, no DDP wrapper), registered with the
  checkpointer by the yaml, moved to the device in ``on_fit_start`` and updated after each step;
* the number of steps per epoch / in total (for step-indexed schedules);
* optimiser steps with optional per-parameter gradient clipping;
* per-epoch validation of the teacher on a trial list (cosine EER / minDCF) after optional BN
  re-estimation on clean training crops; ``history.csv``, plots, ``train_log.txt``;
* export of the teacher as an ``EncoderClassifier``-loadable ``pretrained/`` folder.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from typing import Dict, List, Optional

import torch

import speechbrain as sb
from speechbrain.utils.distributed import ddp_all_reduce, if_main_process, is_distributed_initialized

from speechbrain_ssrl.bn_recalibration import recalibrate_bn
from speechbrain_ssrl.checkpoints import RNGState
from speechbrain_ssrl.data.views import bad_file_list, clean_crop_batches, read_csv_rows
from speechbrain_ssrl.export import (
    RECIPE_ARCH_KEYS,
    ExportError,
    ecapa_kwargs_of,
    find_ecapa_kwargs,
    latest_checkpoint,
    normalize_ecapa_kwargs,
)
from speechbrain_ssrl.history import History, plot_history

logger = logging.getLogger(__name__)



class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row (``max_nonfinite_in_a_row``): training stopped."""


class SSLBrainBase(sb.Brain):
    """Base class: subclasses implement ``compute_forward``/``compute_objectives`` and ``epoch_stats``."""

    #: hparams key of the teacher encoder (kept out of ``modules``)
    teacher_key = "teacher_model"
    #: groups of history columns drawn together in plots/
    plot_groups: Dict[str, List[str]] = {"loss": ["loss"], "lr": ["lr"], "eer": ["eer"]}

    # ------------------------------------------------------------------ set-up
    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN:
            self.steps_per_epoch = len(loader)
        return loader

    @property
    def teacher(self) -> torch.nn.Module:
        return getattr(self.hparams, self.teacher_key)

    @property
    def total_steps(self) -> int:
        return int(self.steps_per_epoch * self.hparams.number_of_epochs)

    def init_teacher_from_student(self) -> None:
        """Fresh runs: the teacher starts as a copy of the student (recovery overwrites it later)."""
        self.teacher.load_state_dict(self.hparams.embedding_model.state_dict())

    def on_fit_start(self):
        if not hasattr(self, "steps_per_epoch"):
            raise RuntimeError("fit() must be given a Dataset (not a DataLoader) so the steps per epoch are known")
        self.init_teacher_from_student()
        super().on_fit_start()  # compile / DDP wrap / optimisers / checkpoint recovery
        self.teacher.to(self.device)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.history = History(os.path.join(self.hparams.output_folder, "history.csv"))
        epoch = self.hparams.epoch_counter.current
        if if_main_process():  # (every rank rewriting the file at once loses rows under DDP)
            self.history.truncate(epoch)  # rows of epochs after the recovered checkpoint are re-done
        self._epoch_start = self._last_plot = time.time()

    def _wrap_distributed(self):
        """DDP-wraps the trainable modules; SyncBatchNorm only when ``sync_batchnorm`` is set and on CUDA.

        (SpeechBrain always converts to SyncBatchNorm, which PyTorch refuses on CPU / gloo.)
        """
        if not self.distributed_launch:
            return super()._wrap_distributed()
        from torch.nn.parallel import DistributedDataParallel as DDP

        sync_bn = bool(getattr(self.hparams, "sync_batchnorm", False)) and str(self.device).startswith("cuda")
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                if sync_bn:
                    module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
                on_cuda = str(self.device).startswith("cuda")
                self.modules[name] = DDP(
                    module, device_ids=[self.device] if on_cuda else None, find_unused_parameters=self.find_unused_parameters
                )

    # ------------------------------------------------------------------ model
    def features(self, wavs: torch.Tensor, lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Fbank + sentence mean normalisation, always in fp32."""
        if lens is None:
            lens = torch.ones(wavs.shape[0], device=wavs.device)
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            feats = self.modules.compute_features(wavs.float())
            return self.modules.mean_var_norm(feats, lens)

    def embed(self, model: torch.nn.Module, wavs: torch.Tensor, lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, T) waveforms → (B, D) embeddings of ``model`` (ECAPA returns (B, 1, D))."""
        feats = self.features(wavs, lens)
        emb = model(feats, lens) if lens is not None else model(feats)
        return emb.reshape(emb.shape[0], -1)

    def embed_fn(self, model: torch.nn.Module):
        """``embed_fn(wavs, lens)`` for extraction utilities, in fp32 and eval mode."""

        def fn(wavs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.embed(model, wavs.to(self.device), lens.to(self.device)).float()

        return fn

    # ------------------------------------------------------------------ faults and exact resume
    def _rng_states(self) -> List[RNGState]:
        ckpt = self.checkpointer
        return [o for o in ckpt.recoverables.values() if isinstance(o, RNGState)] if ckpt is not None else []

    def _fit_train(self, train_set, epoch, enable):
        for rng in self._rng_states():  # state of an end-of-epoch checkpoint: due before the epoch's loader
            rng.apply_pending("epoch")
        return super()._fit_train(train_set, epoch, enable)

    def fit_batch(self, batch):
        """``Brain.fit_batch`` that skips a batch with a non-finite loss: no backward, no optimiser step, no
        ``on_fit_batch_end`` (EMA / centre updates) and no pseudo-label record; ``max_nonfinite_in_a_row``
        (hparams, default 5) such batches in a row stop the run with ``NonFiniteLossError``.

        Why not SpeechBrain's ``--nonfinite_patience`` (``Brain.check_loss_isfinite``, #14): it counts the
        epoch's non-finite losses in total (not in a row), on each rank alone, and only after the batch went
        on: ``backward``, the optimiser step and ``on_fit_batch_end`` still run, so one NaN batch would move
        the EMA teacher, the DINO centre and the pseudo-label records. Here the batch is skipped on every
        rank together (``_loss_finite_everywhere``) before any of that. ``--skip_nonfinite_grads`` (finite
        loss, non-finite gradients) is SpeechBrain's and is kept in ``optimizers_step``."""
        for rng in self._rng_states():  # state of an intra-epoch checkpoint: due at the next batch
            rng.apply_pending("batch")
        should_step = (self.step % self.grad_accumulation_factor) == 0
        self.on_fit_batch_start(batch, should_step)
        state = getattr(self, "state", None)
        mark = state.record_mark() if hasattr(state, "record_mark") else None
        with self.no_sync(not should_step):
            with self.training_ctx:
                outputs = self.compute_forward(batch, sb.Stage.TRAIN)
                loss = self.compute_objectives(outputs, batch, sb.Stage.TRAIN)
            if not self._loss_finite_everywhere(loss):
                if mark is not None:
                    state.discard_records(mark)
                if should_step:  # the accumulation window ends here: drop its gradients
                    self.zero_grad(set_to_none=True)
                self._nonfinite_loss(loss)
                return loss.detach().cpu()
            self.scaler.scale(loss / self.grad_accumulation_factor).backward()
        self.nonfinite_in_a_row = 0
        if should_step:
            self.optimizers_step()
        self.on_fit_batch_end(batch, outputs, loss, should_step)
        return loss.detach().cpu()

    def _loss_finite_everywhere(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every DDP rank (all ranks skip together, or none)."""
        bad = not bool(torch.isfinite(loss.detach()).all())
        if is_distributed_initialized():
            flag = torch.tensor([1.0 if bad else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = bool(flag.item() > 0)
        return not bad

    def _nonfinite_loss(self, loss: torch.Tensor) -> None:
        n = self.nonfinite_in_a_row = getattr(self, "nonfinite_in_a_row", 0) + 1
        limit = int(getattr(self.hparams, "max_nonfinite_in_a_row", 5) or 5)
        epoch = self.hparams.epoch_counter.current
        value = loss.detach().float().flatten()[0].item() if loss.numel() else float("nan")
        logger.warning(
            "non-finite loss (%s) at epoch %d, batch %d: step skipped (no backward, optimiser step, teacher/centre "
            "update or pseudo-label record); %d in a row (the run stops at max_nonfinite_in_a_row=%d)",
            value, epoch, self.step, n, limit,
        )
        if n >= limit:
            where = getattr(self.checkpointer, "checkpoints_dir", None)
            raise NonFiniteLossError(
                f"{n} non-finite losses in a row (max_nonfinite_in_a_row={limit}) at epoch {epoch}, batch {self.step}: "
                f"training stopped. The last checkpoint{f' in {where}' if where else ''} is intact. Likely causes: "
                "too high a learning rate, fp16 overflow (try --precision=bf16 or fp32), broken audio in the training "
                "CSV. Fix the cause and re-run the same command to resume from that checkpoint."
            )

    # ------------------------------------------------------------------ optimisation
    def optimizers_step(self):
        """Like ``Brain.optimizers_step`` but with per-parameter clipping when ``clip_grad_per_param`` is set."""
        clip = getattr(self.hparams, "clip_grad_per_param", None)
        if not clip:
            return super().optimizers_step()
        opts = self.freeze_optimizers(self.optimizers_dict)
        for opt in opts.values():
            self.scaler.unscale_(opt)
        self.before_optimizer_step()
        for opt in opts.values():
            for group in opt.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        torch.nn.utils.clip_grad_norm_(p, clip)
        if not self.scaler.is_enabled() and self.skip_nonfinite_grads:
            self.check_gradients()
        for opt in opts.values():
            self.scaler.step(opt)
        self.scaler.update()
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        self.optimizer_step += 1

    @staticmethod
    @torch.no_grad()
    def sync_buffers(module: torch.nn.Module) -> None:
        """Averages the float buffers (BN running statistics) of ``module`` over the DDP ranks.

        Each rank's student updates its BN statistics on its own batch, so a teacher that takes
        them by EMA (or its own train-mode statistics) would drift apart between ranks; averaging
        after every EMA step keeps every rank's teacher identical.
        """
        if not is_distributed_initialized():
            return
        world = torch.distributed.get_world_size()
        bufs = [b for b in module.buffers() if b.is_floating_point()]
        if not bufs:
            return
        flat = torch.cat([b.reshape(-1) for b in bufs])
        # a sum then a division: ReduceOp.AVG exists on NCCL only (gloo refuses it)
        ddp_all_reduce(flat, torch.distributed.ReduceOp.SUM)
        flat /= world
        i = 0
        for b in bufs:
            b.copy_(flat[i : i + b.numel()].view_as(b))
            i += b.numel()

    def before_optimizer_step(self) -> None:
        """Hook after unscaling and before clipping (e.g. freezing a layer's gradient)."""

    # ------------------------------------------------------------------ validation
    def clean_batches(self, n_batches: int):
        rows = getattr(self, "_train_rows", None)
        if rows is None:
            rows = self._train_rows = read_csv_rows(self.hparams.train_annotation)
        batches = clean_crop_batches(
            rows, n_batches, self.hparams.bn_recal_batch_size, self.hparams.bn_recal_seconds, seed=self.hparams.seed,
            sample_rate=int(getattr(self.hparams, "sample_rate", 16000)),
            bad_files=bad_file_list(self.hparams.train_annotation),  # the training loader's checked read
        )
        return (b.to(self.device) for b in batches)

    @torch.no_grad()
    def recalibrate_on_clean(self, model: torch.nn.Module, n_batches: int) -> None:
        """``model``'s BatchNorm statistics ← ``n_batches`` batches of clean crops (the same on every rank)."""
        recalibrate_bn(model, lambda x: self.embed(model, x), self.clean_batches(n_batches))

    def scoring_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` in eval mode, with BN statistics re-estimated on clean crops when enabled."""
        m = copy.deepcopy(model)
        n = int(getattr(self.hparams, "bn_recal_batches", 0) or 0)
        if n > 0:
            self.recalibrate_on_clean(m, n)
        return m.eval()

    def validate(self, model: Optional[torch.nn.Module] = None) -> Dict[str, float]:
        """Cosine EER (%) and minDCF of ``model`` (default: the teacher) on the validation trials."""
        trials = getattr(self.hparams, "valid_trials", None)
        if not trials or not os.path.exists(trials):
            if not getattr(self, "_said_no_validation", False):  # once per run, not every epoch
                logger.info("no validation: valid_trials %s (give a trial list to validate the teacher)",
                            f"{trials} does not exist" if trials else "is not set")
                self._said_no_validation = True
            return {}
        from speechbrain_ssrl.evaluation import evaluate_model

        m = self.scoring_model(self.teacher if model is None else model)
        res = evaluate_model(
            self.embed_fn(m),
            trial_files=[trials],
            data_folders=self.hparams.valid_data_folders,
            trial_paths=str(getattr(self.hparams, "valid_trial_paths", "wav")),
            max_seconds=getattr(self.hparams, "valid_max_seconds", None),
            progress=not self.noprogressbar,
        )
        r = next(iter(res.values()))
        return {"eer": r["eer"], "eer_se": r.get("eer_se"), "min_dcf_0.01": r.get("min_dcf_0.01")}

    # ------------------------------------------------------------------ logging
    def epoch_stats(self) -> Dict[str, float]:
        """Stage-specific statistics of the finished epoch (override)."""
        return {}

    def validates_after(self, epoch: int) -> bool:
        """Whether the teacher is validated after ``epoch`` (0: the start): every ``validate_every`` epochs and
        after the last; ``validate_every: 0`` never validates, not even the start."""
        every = int(getattr(self.hparams, "validate_every", 1) or 0)
        return every > 0 and (epoch % every == 0 or epoch == int(self.hparams.number_of_epochs))

    def end_of_epoch(self, stage_loss: float, epoch: int) -> Dict[str, object]:
        """Validation, logs, history, plots and the end-of-epoch checkpoint (call from ``on_stage_end``)."""
        for rng in self._rng_states():  # an intra-epoch checkpoint taken after the epoch's last batch
            rng.apply_pending("batch")
        stats: Dict[str, object] = {"epoch": epoch, "loss": float(stage_loss)}
        stats["lr"] = float(self.optimizer.param_groups[0]["lr"])
        stats.update(self.epoch_stats())
        stats["epoch_seconds"] = round(time.time() - self._epoch_start, 1)
        valid = {}
        if if_main_process() and self.validates_after(epoch):
            t0 = time.time()
            valid = self.validate()
            if valid:  # nothing validated (no trial list): no column
                valid["valid_seconds"] = round(time.time() - t0, 1)
        stats.update(valid)
        # every rank calls log_stats: it is @main_process_only and broadcasts its result, so a call on the main
        # process alone desynchronises the next collective (the checkpoint save) under DDP
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch": epoch, "lr": stats["lr"]},
            train_stats={k: v for k, v in stats.items() if k not in ("epoch", "lr") and k not in valid},
            valid_stats={k: v for k, v in valid.items() if v is not None} or None,
        )
        if if_main_process():
            self.history.log(stats)
            # plots/ is redrawn after the last epoch, and after any other once plot_every_seconds have passed since
            # the last drawing (12 PNGs cost ~2 s: every epoch of a real run, only the end of a toy one)
            last = epoch >= int(self.hparams.number_of_epochs)
            if last or time.time() - self._last_plot >= float(getattr(self.hparams, "plot_every_seconds", 0) or 0):
                plot_history(self.history.path, os.path.join(self.hparams.output_folder, "plots"), self.plot_groups)
                self._last_plot = time.time()
        meta = {k: float(v) for k, v in stats.items() if isinstance(v, (int, float)) and v is not None and math.isfinite(float(v))}
        # the epoch is over: the next one starts at step 0 with a fresh loss average, also after a resume
        self.step, self.avg_train_loss = 0, 0.0
        self.checkpointer.save_and_keep_only(meta=meta, num_to_keep=1)
        self._epoch_start = time.time()
        return stats

    # ------------------------------------------------------------------ export
    def ecapa_kwargs(self) -> Dict[str, object]:
        h = self.hparams
        kw: Dict[str, object] = {"input_size": int(h.n_mels), "lin_neurons": int(h.emb_dim)}
        for k in RECIPE_ARCH_KEYS:
            if hasattr(h, k):
                v = getattr(h, k)
                kw[k] = list(v) if isinstance(v, (list, tuple)) else v
        return kw

    def export_teacher(self, folder: Optional[str] = None) -> Optional[str]:
        """Writes ``<output_folder>/pretrained`` (EncoderClassifier-loadable) from the (BN-recalibrated) teacher."""
        if not if_main_process():
            return None
        from speechbrain_ssrl.export import export_encoder

        folder = folder or os.path.join(self.hparams.output_folder, "pretrained")
        model = self.scoring_model(self.teacher).cpu()
        export_encoder(model, folder, ecapa_kwargs=self.ecapa_kwargs(), n_mels=int(self.hparams.n_mels), overwrite=True)
        logger.info("exported the teacher encoder to %s", folder)
        return folder


def find_encoder_checkpoint(folder: str) -> str:
    """The teacher weights of a finished or running stage: ``pretrained/embedding_model.ckpt``
    (export, preferred), ``embedding_model.ckpt`` (an export folder itself) or the newest
    ``save/CKPT+*/teacher_model.ckpt``."""
    for cand in (os.path.join(folder, "pretrained", "embedding_model.ckpt"), os.path.join(folder, "embedding_model.ckpt")):
        if os.path.isfile(cand):
            return cand
    ckpt = latest_checkpoint(folder)
    if ckpt is not None and os.path.isfile(os.path.join(ckpt, "teacher_model.ckpt")):
        return os.path.join(ckpt, "teacher_model.ckpt")
    raise FileNotFoundError(
        f"{folder}: no usable teacher found (looked for pretrained/embedding_model.ckpt, embedding_model.ckpt "
        "and save/CKPT+*/teacher_model.ckpt). Point --dino_folder at the output folder of a DINO run "
        "(python train.py hparams/dino_ecapa.yaml ...)"
    )


#: yaml key of each ``ECAPA_TDNN`` argument the recipes set under another name
_YAML_NAME = {"lin_neurons": "emb_dim", "input_size": "n_mels"}


def architecture_fix(ckpt: str, model: torch.nn.Module) -> str:
    """For a checkpoint whose architecture is recorded (``export.find_ecapa_kwargs``: the export's ``ecapa.json``,
    or the training ``hyperparams.yaml`` above ``save/``): which yaml keys differ from ``model``'s architecture and
    the command-line overrides that would fit it, in one line; "" when none is found or readable or it names no
    difference."""
    try:
        found = find_ecapa_kwargs(ckpt)
        if found is None:
            return ""
        theirs = normalize_ecapa_kwargs(found)
        ours = ecapa_kwargs_of(model)
    except (OSError, ValueError, ExportError):
        return ""
    keys = [k for k in ("input_size", "lin_neurons") + RECIPE_ARCH_KEYS if theirs.get(k) != ours.get(k)]
    if not keys:
        return ""

    def text(v):
        return str(v).replace(" ", "")

    differs = ", ".join(f"{_YAML_NAME.get(k, k)} {text(theirs[k])} (this yaml: {text(ours[k])})" for k in keys)
    overrides = " ".join(f"--{_YAML_NAME.get(k, k)}={text(theirs[k])}" for k in keys)
    return (f"the DINO run's recorded architecture has {differs}. Fix: pass {overrides} to train from it, or train "
            "stage 1 again with this recipe's yaml")


def load_encoder(folder: str, model: torch.nn.Module) -> str:
    """Loads the teacher of ``folder`` into ``model`` (strict); a clear error on another architecture."""
    path = find_encoder_checkpoint(folder)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        fix = architecture_fix(path, model)
        if fix:
            raise RuntimeError(f"{path} does not fit this recipe's encoder (different architecture): {fix}") from None
        raise RuntimeError(
            f"{path} does not fit this recipe's encoder (different architecture: check channels / emb_dim "
            f"against the DINO run's yaml):\n{e}"
        ) from None
    logger.info("loaded the encoder from %s", path)
    return path
