"""Stage 2: SSRL, self-supervised reflective learning, as a SpeechBrain ``Brain``.

One run, starting from the DINO teacher and the k-means labels y0 (centroids → AAM classifier):

* the student trains on short *augmented* crops against the current pseudo labels, its per-sample
  AAM loss weighted by the clean probabilities p_n (``Σ p·CE / Σ p``);
* the EMA teacher (encoder + classifier, out of ``modules``) embeds long *clean* crops of the same
  utterances and relabels them online: ŷ = nearest active prototype; in the label-update phase its
  loss target is the queue vote ``mode(Q_n + [ŷ])``; its per-sample loss λ feeds the noisy-label GMM;
* at the end of every epoch (``PseudoLabelState.end_epoch``): ŷ are pushed into the queues; in the
  update phase y ← queue vote and clusters owning no utterance are pruned; the GMM is refitted.

Epoch layout (1-based): epochs 1..E_fix keep the labels fixed (lr cosine ``lr_fix_start → lr_fix_end``);
the teacher starts recording ``⌊L/2⌋ + 1`` epochs before the end of that phase so that the queues are full
at the first update (end of epoch E_fix); epochs E_fix+1.. are the update phase (lr cosine
``lr_start → lr_final``), labels updated every ``label_update_every`` epochs.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Optional

import torch

import speechbrain as sb

from speechbrain_ssrl.brains.base import SSLBrainBase
from speechbrain_ssrl.ema import LinearMomentum, ema_update_
from speechbrain_ssrl.losses import weighted_mean
from speechbrain_ssrl.pseudo_labels import PseudoLabelState
from speechbrain_ssrl.schedules import TwoSegmentCosine, set_lr

logger = logging.getLogger(__name__)


class SSRLBrain(SSLBrainBase):
    """SSRL stage. yaml keys: ``embedding_model``, ``classifier`` (modules), ``teacher_model``,
    ``teacher_classifier`` (checkpointed, not modules), ``student_augment``; the pseudo-label state
    is created by ``setup_pseudo_labels`` and registered with the checkpointer as ``pseudo_labels``."""

    #: history row 0 also validates the starting teacher (the DINO model)
    validate_at_start = True

    plot_groups = {
        "loss": ["loss"],
        "lr": ["lr"],
        "eer": ["eer"],
        "n_clusters": ["n_clusters"],
        "label_quality": ["nmi", "purity", "accuracy"],
        "labels_changed": ["labels_changed", "hat_changed"],
        "clean_probability": ["mean_p", "frac_noisy"],
    }

    # ------------------------------------------------------------------ set-up
    def setup_pseudo_labels(self, labels: torch.Tensor, centroids: torch.Tensor, true_labels: Optional[torch.Tensor] = None) -> None:
        """Classifier rows ← centroids, teacher ← student, and a fresh ``PseudoLabelState`` from y0.

        Must be called before ``fit``; checkpoint recovery (inside ``fit``) then overwrites all of it
        when the run is resumed.
        """
        h = self.hparams
        K = int(h.K0)
        if centroids.shape[0] != K:
            raise ValueError(f"initial clustering has {centroids.shape[0]} centroids but K0={K}: delete it or fix K0")
        with torch.no_grad():
            h.classifier.weight.copy_(torch.nn.functional.normalize(centroids.float(), dim=1).to(h.classifier.weight.device))
        self.state = PseudoLabelState(
            labels,
            K,
            queue_length=h.queue_length,
            queue_tie=h.queue_tie,
            noisy_label_model=h.noisy_label_model,
        )
        self.true_labels = true_labels  # diagnostics only
        self.checkpointer.add_recoverable("pseudo_labels", self.state)

    def init_teacher_from_student(self) -> None:
        self.teacher.load_state_dict(self.hparams.embedding_model.state_dict())
        self.hparams.teacher_classifier.load_state_dict(self.hparams.classifier.state_dict())

    def on_fit_start(self):
        if not hasattr(self, "state"):
            raise RuntimeError("call setup_pseudo_labels() before fit()")
        super().on_fit_start()
        h = self.hparams
        h.teacher_classifier.to(self.device)
        for p in h.teacher_classifier.parameters():
            p.requires_grad_(False)
        # pruning is part of the checkpointed state: both classifiers follow it
        self._sync_pruning()
        fix_steps = int(h.fixed_label_epochs) * self.steps_per_epoch
        self.lr_schedule = TwoSegmentCosine(fix_steps, self.total_steps, h.lr_fix_start, h.lr_fix_end, h.lr_start, h.lr_final)
        self.momentum = LinearMomentum(h.ema_start, h.ema_end, self.total_steps)
        if self.epoch == 0:
            self.log_start()

    def log_start(self) -> None:
        """History row 0: the k-means labels and the DINO teacher before any SSRL step."""
        from speechbrain.utils.distributed import if_main_process

        if not if_main_process():
            return
        row: Dict[str, object] = {"epoch": 0, "n_clusters": int(torch.unique(self.state.labels).numel()), "phase": "start"}
        if self.true_labels is not None:
            row.update(self.state.diagnostics(self.true_labels))
        if self.validate_at_start:
            row.update(self.validate())
        self.history.log(row)

    def _sync_pruning(self) -> None:
        for clf in (self.hparams.classifier, self.hparams.teacher_classifier):
            if self.state.pruned.any():
                clf.active.copy_(~self.state.pruned.to(clf.active.device))

    # ------------------------------------------------------------------ phases (1-based epochs)
    @property
    def epoch(self) -> int:
        return int(self.hparams.epoch_counter.current)

    def teacher_labelling(self, epoch: int) -> bool:
        """The teacher records from ⌊L/2⌋+1 epochs before the first label update."""
        start = int(self.hparams.fixed_label_epochs) - (int(self.hparams.queue_length) // 2 + 1) + 1
        return epoch >= max(1, start)

    def in_update_phase(self, epoch: int) -> bool:
        return epoch > int(self.hparams.fixed_label_epochs)

    def updates_labels_after(self, epoch: int) -> bool:
        """Labels are replaced by the queue votes at the end of epoch E_fix, then every ``label_update_every``."""
        e_fix = int(self.hparams.fixed_label_epochs)
        every = max(1, int(self.hparams.label_update_every))
        return bool(self.hparams.update_labels) and epoch >= e_fix and (epoch - e_fix) % every == 0

    # ------------------------------------------------------------------ step
    def on_fit_batch_start(self, batch, should_step):
        set_lr(self.optimizer, self.lr_schedule(self.optimizer_step))

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        idx = batch.index if isinstance(batch.index, torch.Tensor) else torch.as_tensor(batch.index)
        idx = idx.to(self.device).long().flatten()
        teacher_out = None
        if self.teacher_labelling(self.epoch):
            t_wav, _ = batch.teacher_view
            self.teacher.train(self.hparams.teacher_bn == "train")
            with torch.no_grad():
                t_emb = self.embed(self.teacher, t_wav).float()
                teacher_out = t_emb
        s_wav, _ = batch.student_view
        s_wav = self.hparams.student_augment(s_wav)
        s_emb = self.embed(self.modules.embedding_model, s_wav)
        if getattr(self.hparams, "student_dropout", 0.0):
            s_emb = torch.nn.functional.dropout(s_emb, p=float(self.hparams.student_dropout), training=True)
        return s_emb.float(), teacher_out, idx

    def compute_objectives(self, predictions, batch, stage):
        s_emb, t_emb, idx = predictions
        h = self.hparams
        if t_emb is not None:
            with torch.no_grad():
                y_hat, cos = h.teacher_classifier.nearest(t_emb)
                y_t = self.state.teacher_targets(idx, y_hat, use_queue=self.in_update_phase(self.epoch))
                lam = h.teacher_classifier.teacher_loss(cos, y_t, margin=float(getattr(h, "teacher_margin", 0.0)))
            self.state.record(idx, y_hat, lam)
        y = self.state.targets(idx)
        per_sample = self.modules.classifier(s_emb, y, reduction="none")
        w = self.state.weights(idx)
        return weighted_mean(per_sample, w)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step:
            ema_update_(self._teacher_modules(), self._student_modules(), self.momentum(self.optimizer_step), buffers=self._buffer_mode())
            self.sync_buffers(self._teacher_modules())

    def _save_intra_epoch_ckpt(self):
        # SpeechBrain calls this on every rank at the same step (the decision is broadcast), and the
        # checkpointer writes on rank 0 only: rank 0 first takes the other ranks' records of this epoch
        self.state.gather_records_to_main()
        super()._save_intra_epoch_ckpt()

    def _buffer_mode(self) -> str:
        return "none" if self.hparams.teacher_bn == "train" else "ema"

    def _teacher_modules(self):
        return torch.nn.ModuleDict({"encoder": self.teacher, "classifier": self.hparams.teacher_classifier})

    def _student_modules(self):
        return torch.nn.ModuleDict({"encoder": self.hparams.embedding_model, "classifier": self.hparams.classifier})

    # ------------------------------------------------------------------ epoch
    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.hparams.crop_sampler.set_epoch(epoch)

    def epoch_stats(self) -> Dict[str, float]:
        epoch = self.epoch
        labelling = self.teacher_labelling(epoch)
        update = self.updates_labels_after(epoch)
        st = self.state.end_epoch(update_labels=update, prune=bool(self.hparams.prune_clusters)) if labelling else None
        stats: Dict[str, float] = {"momentum": float(self.momentum(self.optimizer_step)), "steps": int(self.optimizer_step)}
        if st is not None:
            newly = st.pop("newly_pruned")
            if newly.numel():
                for clf in (self.hparams.classifier, self.hparams.teacher_classifier):
                    clf.prune(newly.to(clf.active.device))
            stats.update(st)
        else:
            stats["n_clusters"] = int(torch.unique(self.state.labels).numel())
        stats["phase"] = "update" if self.in_update_phase(epoch) else "fixed"
        if self.true_labels is not None:
            stats.update(self.state.diagnostics(self.true_labels))
        return stats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.end_of_epoch(stage_loss, epoch)

    def dump_rank_state(self, folder: str) -> str:
        """Saves this process's pseudo-label state and teacher (``rank<r>.pt``): a DDP consistency check."""
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"rank{rank}.pt")
        torch.save(
            {
                "labels": self.state.labels.clone(),
                "queues": self.state.queue.state_dict()["queues"],
                "p": self.state.noise.p.clone(),
                "pruned": self.state.pruned.clone(),
                "teacher": {k: v.detach().cpu().clone() for k, v in self.teacher.state_dict().items()},
                "teacher_classifier": {k: v.detach().cpu().clone() for k, v in self.hparams.teacher_classifier.state_dict().items()},
            },
            path,
        )
        return path
