"""Stage 1: DINO self-distillation of an ECAPA-TDNN as a SpeechBrain ``Brain``.

Per batch: the EMA teacher (encoder + head, out of ``modules``) embeds the clean global crops; the
student embeds every crop (each augmented with probability ``aug_prob``); the DINO loss matches the
student's view of crop j to the teacher's sharpened, centred view of global crop i != j. After the
step: teacher EMA (linear momentum schedule), centre update (all-reduced under DDP).
Schedules (step-indexed, resumable): warm-up + cosine learning rate, cosine weight decay; the
prototype layer's gradient is dropped during the first ``freeze_last_layer_epochs`` epochs.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, Optional

import torch

import speechbrain as sb

from speechbrain_ssrl.brains.base import SSLBrainBase
from speechbrain_ssrl.dino import DINOLoss
from speechbrain_ssrl.ema import LinearMomentum, ema_update_
from speechbrain_ssrl.schedules import WarmupCosine, cosine, set_lr

logger = logging.getLogger(__name__)


class DINOBrain(SSLBrainBase):
    """DINO stage. yaml keys: ``embedding_model``, ``dino_head`` (modules), ``teacher_model``,
    ``teacher_head`` (not modules; in the checkpointer), ``dino_loss``, ``student_augment``."""

    plot_groups = {"loss": ["loss"], "lr": ["lr"], "eer": ["eer"], "teacher_entropy": ["teacher_entropy"], "momentum": ["momentum"]}

    def init_teacher_from_student(self) -> None:
        self.teacher.load_state_dict(self.hparams.embedding_model.state_dict())
        self.hparams.teacher_head.load_state_dict(self.hparams.dino_head.state_dict())

    def on_fit_start(self):
        super().on_fit_start()
        h = self.hparams
        h.teacher_head.to(self.device)
        for p in h.teacher_head.parameters():
            p.requires_grad_(False)
        h.dino_loss.to(self.device)
        warm = int(round(h.warmup_epochs * self.steps_per_epoch))
        self.lr_schedule = WarmupCosine(h.lr, h.lr_final, warm, self.total_steps)
        self.momentum = LinearMomentum(h.ema_start, h.ema_end, self.total_steps)
        self._entropy_sum, self._entropy_n = 0.0, 0

    def _teacher_modules(self):
        return torch.nn.ModuleDict({"encoder": self.teacher, "head": self.hparams.teacher_head})

    def _student_modules(self):
        return torch.nn.ModuleDict({"encoder": self.hparams.embedding_model, "head": self.hparams.dino_head})

    # ------------------------------------------------------------------ step
    def on_fit_batch_start(self, batch, should_step):
        h, step = self.hparams, self.optimizer_step
        wd = cosine(step, self.total_steps, h.weight_decay, h.weight_decay_end)
        set_lr(self.optimizer, self.lr_schedule(step), wd)

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        g, _ = batch.global_views  # (B, n_global, T_g)
        loc, _ = batch.local_views  # (B, n_local, T_l)
        B, ng, Tg = g.shape
        g_views = g.transpose(0, 1).reshape(ng * B, Tg)  # view-major
        train_mode = self.hparams.teacher_bn == "train"
        self.teacher.train(train_mode)
        self.hparams.teacher_head.train(train_mode)
        with torch.no_grad():
            t_out = self.hparams.teacher_head(self.embed(self.teacher, g_views)).float()
        aug = self.hparams.student_augment
        s_out = [self.modules.dino_head(self.embed(self.modules.embedding_model, aug(g_views)))]
        if loc.shape[1] > 0:
            nl, Tl = loc.shape[1], loc.shape[2]
            l_views = loc.transpose(0, 1).reshape(nl * B, Tl)
            s_out.append(self.modules.dino_head(self.embed(self.modules.embedding_model, aug(l_views))))
        return torch.cat(s_out).float(), t_out

    def compute_objectives(self, predictions, batch, stage):
        s_out, t_out = predictions
        loss = self.hparams.dino_loss(s_out, t_out)
        self._last_teacher_out = t_out
        return loss

    def before_optimizer_step(self) -> None:
        epoch = self.hparams.epoch_counter.current
        if epoch <= int(self.hparams.freeze_last_layer_epochs):
            for p in self.hparams.dino_head.last_layer_parameters():
                p.grad = None

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if not should_step:
            return
        m = self.momentum(self.optimizer_step)
        buffers = "none" if self.hparams.teacher_bn == "train" else "ema"
        ema_update_(self._teacher_modules(), self._student_modules(), m, buffers=buffers)
        self.sync_buffers(self._teacher_modules())
        loss_fn: DINOLoss = self.hparams.dino_loss
        t_out = self._last_teacher_out
        self._entropy_sum += loss_fn.entropy(loss_fn.teacher_targets(t_out))
        self._entropy_n += 1
        loss_fn.update_center(t_out)

    # ------------------------------------------------------------------ epoch
    def epoch_stats(self) -> Dict[str, float]:
        out = {
            "momentum": float(self.momentum(self.optimizer_step)),
            "teacher_entropy": self._entropy_sum / max(self._entropy_n, 1),
            "steps": int(self.optimizer_step),
        }
        self._entropy_sum, self._entropy_n = 0.0, 0
        return out

    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN and hasattr(self.hparams, "crop_sampler"):
            self.hparams.crop_sampler.set_epoch(epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.end_of_epoch(stage_loss, epoch)

    # ------------------------------------------------------------------ export
    def export_teacher(self, folder: Optional[str] = None, untrained: bool = False) -> Optional[str]:
        """The base export, plus what training it had in ``export_info.json`` (``"training"``): the stage
        reading this folder (SSRL, iterative) refuses an untrained one as its teacher."""
        out = super().export_teacher(folder)
        if out is not None:
            write_training_info(out, {
                "stage": "dino", "untrained": bool(untrained),
                "epochs_trained": 0 if untrained else int(self.hparams.epoch_counter.current),
            })
        return out

    def export_untrained(self) -> Optional[str]:
        """``export_untrained: True``: exports the encoder as initialised (no training; BN statistics
        re-estimated when ``bn_recal_batches`` > 0), marked untrained: the random-init yardstick."""
        self.init_teacher_from_student()
        self.teacher.to(self.device)
        logger.info("export_untrained: exporting the untrained encoder (no DINO training)")
        return self.export_teacher(untrained=True)


def write_training_info(folder: str, training: Dict[str, object]) -> None:
    """Adds ``{"training": training}`` to ``folder/export_info.json`` (atomically)."""
    from speechbrain_ssrl.recipe_checks import TRAINING_INFO_KEY

    path = os.path.join(folder, "export_info.json")
    info = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    info[TRAINING_INFO_KEY] = training
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, path)
