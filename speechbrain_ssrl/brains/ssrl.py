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
the teacher records from ``⌊L/2⌋ + 1`` epochs before the end of that phase (never before epoch 1), so the
queues are full at the first update (end of epoch E_fix) when E_fix ≥ ⌊L/2⌋ + 1; with a shorter label-fixed
phase the first votes hold ⌊L/2⌋ seeded copies of y0 against fewer teacher labels, so they return y0
(a warning says so). The teacher's loss target is the queue vote from epoch E_fix on (the labels the student
trains on after the update); epochs E_fix+1.. are the update phase (optional linear warm-up
``lr_fix_end → lr_start`` over ``update_warmup_epochs``, then cosine ``lr_start → lr_final``), labels
updated every ``label_update_every`` epochs.

With ``fixed_until_agreement: A`` > 0 the label-fixed phase lasts *at least* E_fix epochs and ends at the end of
the first epoch ≥ E_fix in which the teacher's raw labels ŷ agree with at least a fraction A of the current
labels (or at ``fixed_label_max_epochs``, when set); until then the lr stays at ``lr_fix_end`` after its cosine,
and the update segment (warm-up, cosine) runs over the epochs left after that end. The epoch is kept in the
checkpointed pseudo-label state (``fixed_end_epoch``), so a resumed run keeps its phases and lr.

Online clustering (``online_clustering``): ŷ is the nearest active prototype of the teacher classifier,
batch by batch (the paper), optionally with the release's margin-at-the-label rule or a confidence gate;
or, when ``relabel_prototypes`` is ``mean``/``kmeans`` or ``relabel_assignment`` is ``sinkhorn``/``knn``, it is
computed at the end of the epoch from the teacher embeddings recorded during it: the prototypes (both
classifiers' rows) are re-estimated as the cluster means of those embeddings (plus Lloyd steps), then ŷ
and λ follow from them. ``teacher_bn: recal`` re-estimates the teacher's BatchNorm statistics on clean
crops before every labelling epoch (and keeps them through it).

Re-clustering (``recluster_epochs`` and ``recluster_every``, neither paper nor release; ``reclustering.py``): at
the end of each listed epoch the teacher's embeddings of every training utterance are clustered afresh (k-means, as many clusters as
are active, saved in ``<output_folder>/reclustering/epoch_<e>/``; embedded anew, or with ``recluster_embeddings: epoch``
the ones the epoch's relabelling recorded), the new clusters take the ids they share the
most utterances with, and labels, queues, clean probabilities and both classifiers' rows restart from them;
with ``recluster_max_gain`` only when the new partition's k-means objective beats the labels' by more than 0 and at
most that much (``reclustering.accepts``), else the labels are kept; with ``recluster_if: never_noisy`` only while
the noisy-label model has found no noisy mode in any epoch so far (``reclustering.allows``), else nothing is
embedded and the online loop goes on (``recluster_skipped`` 1). With ``recluster_merge_connectivity`` the new
clusters that the embeddings' k-NN graph joins at least that strongly are merged first
(``spectral_clustering.merge_connected``; ``recluster_merged``) and the ids left over are pruned at once, so the
next re-clustering asks for fewer clusters: the count can fall.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional

import torch

import speechbrain as sb

from speechbrain_ssrl.brains.base import SSLBrainBase
from speechbrain_ssrl.ema import LinearMomentum, ema_update_
from speechbrain_ssrl.label_diagnostics import (
    cluster_size_stats,
    label_merges,
    pruning_report,
    read_persons,
    write_label_merges,
)
from speechbrain_ssrl.losses import weighted_mean
from speechbrain_ssrl.noisy_labels import noisy_floor_setting
from speechbrain_ssrl.online_clustering import RelabelConfig, relabel, row_chunks, rule_assign
from speechbrain_ssrl.pseudo_labels import PseudoLabelState
from speechbrain_ssrl.reclustering import (
    RECLUSTER_INITS,
    accepts,
    allows,
    epoch_embeddings,
    map_onto,
    recluster_embeddings,
    recluster_epochs,
    recluster_every,
    recluster_if,
    recluster_max_gain,
    recluster_merge_connectivity,
)
from speechbrain_ssrl.schedules import TwoSegmentCosine, cosine, set_lr
from speechbrain_ssrl.spectral_clustering import check_method

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
        "labels_changed": ["labels_changed", "hat_changed", "recluster_changed"],
        "clean_probability": ["mean_p", "frac_noisy", "gmm_noisy_fraction"],
        "teacher_assignments": ["hat_nmi", "hat_purity", "nmi"],
        "cluster_sizes": ["size_min", "size_median", "size_max"],
        "pruning": ["pruned_top_share", "pruned_proto_cos"],
        "clean_detector": ["clean_precision", "clean_recall", "clean_base_rate", "clean_lift"],
        "merges": ["max_speakers_per_home"],
    }

    # ------------------------------------------------------------------ set-up
    def setup_pseudo_labels(
        self,
        labels: torch.Tensor,
        centroids: torch.Tensor,
        true_labels: Optional[torch.Tensor] = None,
        speaker_names: Optional[List[str]] = None,
    ) -> None:
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
            gmm_kwargs={"space": str(getattr(h, "gmm_space", "log_loss")),
                        "noisy_floor": getattr(h, "gmm_noisy_floor", None),
                        "noisy_min_fraction": getattr(h, "gmm_noisy_min_fraction", 0.0)},
        )
        self.true_labels = true_labels  # diagnostics only
        self.speaker_names = speaker_names  # names of the true label ids (label_merges.csv)
        self.relabel_cfg = RelabelConfig(
            prototypes=str(getattr(h, "relabel_prototypes", "classifier")),
            kmeans_iterations=int(getattr(h, "relabel_kmeans_iterations", 1)),
            assignment=str(getattr(h, "relabel_assignment", "nearest")),
            sinkhorn_epsilon=float(getattr(h, "sinkhorn_epsilon", 0.05)),
            sinkhorn_iterations=int(getattr(h, "sinkhorn_iterations", 3)),
            teacher_rule=str(getattr(h, "teacher_rule", "nearest")),
            label_margin=float(h.aam_margin) if hasattr(h, "aam_margin") else 0.2,
            min_margin=float(getattr(h, "relabel_min_margin", 0.0)),
            knn_k=int(getattr(h, "relabel_knn_k", 5)),
            knn_self_weight=float(getattr(h, "relabel_knn_self_weight", 3.5)),
        )
        self.recluster_at = sorted(set(recluster_epochs(getattr(h, "recluster_epochs", None), int(h.number_of_epochs)))
                                   | set(recluster_every(getattr(h, "recluster_every", 0), int(h.fixed_label_epochs),
                                                         int(h.number_of_epochs))))
        self.recluster_gate = recluster_max_gain(getattr(h, "recluster_max_gain", None))
        self.recluster_condition = recluster_if(getattr(h, "recluster_if", None), bool(h.noisy_label_model),
                                                noisy_floor_setting(getattr(h, "gmm_noisy_floor", None)),
                                                scheduled=bool(self.recluster_at))
        self.recluster_source = recluster_embeddings(getattr(h, "recluster_embeddings", None))
        self.recluster_merge = recluster_merge_connectivity(getattr(h, "recluster_merge_connectivity", None))
        if str(getattr(h, "recluster_init", "k-means++")) not in RECLUSTER_INITS:
            raise ValueError(f"recluster_init: {h.recluster_init!r} is not one of {', '.join(RECLUSTER_INITS)} (see the yaml's comment)")
        check_method(str(getattr(h, "cluster_method", "kmeans")), getattr(h, "spectral_neighbors", 10),
                     from_labels=str(getattr(h, "recluster_init", "k-means++")) == "labels" and bool(self.recluster_at))
        if h.teacher_bn not in ("eval", "train", "recal"):
            raise ValueError(f"teacher_bn: {h.teacher_bn!r} is not one of eval, train, recal (see the yaml's comment)")
        L, e_fix = int(h.queue_length), int(h.fixed_label_epochs)
        if bool(getattr(h, "update_labels", True)) and L > 1 and e_fix < L // 2 + 1:
            logger.warning(
                "fixed_label_epochs=%d < queue_length // 2 + 1 = %d: the first label updates vote over %d seeded copies "
                "of y0 and fewer teacher labels, so they keep y0", e_fix, L // 2 + 1, L // 2,
            )
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
        self.build_lr_schedule()
        self.momentum = LinearMomentum(h.ema_start, h.ema_end, self.total_steps)
        if self.epoch == 0 and self.optimizer_step == 0:  # not after a resume inside epoch 1: row 0 exists
            self.log_start()

    def build_lr_schedule(self) -> None:
        """Two cosine segments split at the end of the label-fixed phase; while that end waits for the
        teacher's agreement, the label-fixed cosine over E_fix epochs and then its end value."""
        h = self.hparams
        end = self.fixed_end
        if end is None:
            fix_steps = int(h.fixed_label_epochs) * self.steps_per_epoch
            self.lr_schedule = lambda step: cosine(step, fix_steps, h.lr_fix_start, h.lr_fix_end)
            return
        warm = int(round(float(getattr(h, "update_warmup_epochs", 0.0)) * self.steps_per_epoch))
        self.lr_schedule = TwoSegmentCosine(
            end * self.steps_per_epoch, self.total_steps, h.lr_fix_start, h.lr_fix_end, h.lr_start, h.lr_final,
            upd_warmup_steps=warm,
        )

    def log_start(self) -> None:
        """History row 0: the k-means labels and the DINO teacher before any SSRL step."""
        from speechbrain.utils.distributed import if_main_process

        if not if_main_process():
            return
        row: Dict[str, object] = {"epoch": 0, "n_clusters": int(torch.unique(self.state.labels).numel()), "phase": "start"}
        if self.true_labels is not None:
            row.update(self.state.diagnostics(self.true_labels))
        if self.validate_at_start and self.validates_after(0):
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

    @property
    def agreement_mode(self) -> bool:
        """The label-fixed phase ends by the teacher's measured agreement (``fixed_until_agreement`` > 0)."""
        return bool(self.hparams.update_labels) and float(getattr(self.hparams, "fixed_until_agreement", 0.0) or 0.0) > 0

    @property
    def fixed_end(self) -> Optional[int]:
        """The last label-fixed epoch: ``fixed_label_epochs``, or with ``fixed_until_agreement`` the epoch the
        teacher agreed (None while it has not)."""
        if not self.agreement_mode:
            return int(self.hparams.fixed_label_epochs)
        return self.state.fixed_end_epoch

    def in_update_phase(self, epoch: int) -> bool:
        end = self.fixed_end
        return end is not None and epoch > end

    def teacher_uses_vote(self, epoch: int) -> bool:
        """The teacher's loss target is the queue vote from the last label-fixed epoch on: at its end the
        first update gives the student that vote (the release's rule); before, ŷ itself."""
        return bool(self.hparams.update_labels) and epoch >= int(self.hparams.fixed_label_epochs)

    def updates_labels_after(self, epoch: int) -> bool:
        """Labels are replaced by the queue votes at the end of the last label-fixed epoch, then every
        ``label_update_every``."""
        end = self.fixed_end
        every = max(1, int(self.hparams.label_update_every))
        return bool(self.hparams.update_labels) and end is not None and epoch >= end and (epoch - end) % every == 0

    def decide_fixed_end(self, epoch: int, records: Dict[str, torch.Tensor]) -> Optional[float]:
        """With ``fixed_until_agreement``: ends the label-fixed phase at this epoch when the teacher's ŷ of the
        epoch (all ranks' records) agree with at least that fraction of the current labels, or when
        ``fixed_label_max_epochs`` is reached. Returns the measured agreement (None when not measured)."""
        h = self.hparams
        if not self.agreement_mode or self.state.fixed_end_epoch is not None or epoch < int(h.fixed_label_epochs):
            return None
        idx, hat = records["idx"], records["hat"].cpu()
        agree = float((hat == self.state.labels[idx.cpu()]).double().mean()) if idx.numel() else 0.0
        cap = getattr(h, "fixed_label_max_epochs", None)
        if agree >= float(h.fixed_until_agreement) or (cap is not None and epoch >= int(cap)):
            self.state.fixed_end_epoch = int(epoch)
            logger.info("label-fixed phase ends after epoch %d: teacher agrees with %.3f of the labels "
                        "(fixed_until_agreement %.3f, fixed_label_max_epochs %s)", epoch, agree,
                        float(h.fixed_until_agreement), cap)
            self.build_lr_schedule()
        return agree

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
            self.teacher.train(self.hparams.teacher_bn == "train")  # eval / recal: running statistics
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
                cos = h.teacher_classifier.mask(h.teacher_classifier.cosine(t_emb))
                y_hat = rule_assign(cos, self.state.targets(idx), self.relabel_cfg)
                y_t = self.state.teacher_targets(idx, y_hat, use_queue=self.teacher_uses_vote(self.epoch))
                lam = h.teacher_classifier.teacher_loss(cos, y_t, margin=float(getattr(h, "teacher_margin", 0.0)))
            # relabelling at the epoch end recomputes ŷ and λ from the embeddings kept here
            self.state.record(idx, y_hat, lam, embeddings=t_emb if self.keeps_embeddings(self.epoch) else None)
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
        return "ema" if self.hparams.teacher_bn == "eval" else "none"

    def _teacher_modules(self):
        return torch.nn.ModuleDict({"encoder": self.teacher, "classifier": self.hparams.teacher_classifier})

    def _student_modules(self):
        return torch.nn.ModuleDict({"encoder": self.hparams.embedding_model, "classifier": self.hparams.classifier})

    # ------------------------------------------------------------------ epoch
    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.hparams.crop_sampler.set_epoch(epoch)
            # (not when resuming inside the epoch: the checkpointed teacher holds this epoch's statistics)
            if self.hparams.teacher_bn == "recal" and self.teacher_labelling(int(epoch)) and self.step == 0:
                self.recalibrate_teacher_bn()

    def recalibrate_teacher_bn(self) -> None:
        """Teacher BatchNorm statistics ← clean training crops (``bn_recal_batches`` batches), as for y0's
        model; the same crops on every rank (seeded), so DDP teachers stay identical."""
        n = int(getattr(self.hparams, "bn_recal_batches", 0) or 0) or 20
        self.teacher.to(self.device)
        self.recalibrate_on_clean(self.teacher, n)
        self.teacher.eval()

    def epoch_stats(self) -> Dict[str, float]:
        epoch = self.epoch
        labelling = self.teacher_labelling(epoch)
        stats: Dict[str, float] = {"momentum": float(self.momentum(self.optimizer_step)), "steps": int(self.optimizer_step)}
        records: Optional[Dict[str, torch.Tensor]] = None
        if labelling:
            protos = self.hparams.teacher_classifier.weight.detach().clone()  # before this update (diagnostics)
            if self.relabel_cfg.at_epoch_end:
                records = self.relabel_at_epoch_end(epoch)
            elif (self.agreement_mode and self.state.fixed_end_epoch is None) or self.reclusters_from_epoch(epoch):
                records = self.state.take_epoch_records()  # all ranks' ŷ (the agreement) and embeddings (re-clustering)
            if records is not None:
                agree = self.decide_fixed_end(epoch, records)
                if agree is not None:
                    stats["teacher_agreement"] = agree
            update = self.updates_labels_after(epoch)
            st = self.state.end_epoch(update_labels=update, prune=bool(self.hparams.prune_clusters), records=records)
            newly, previous = st.pop("newly_pruned"), st.pop("previous_labels")
            if newly.numel():
                stats.update(pruning_report(previous, self.state.labels, newly, protos))
                for clf in (self.hparams.classifier, self.hparams.teacher_classifier):
                    clf.prune(newly.to(clf.active.device))
            stats.update(st)
        else:
            stats["n_clusters"] = int(torch.unique(self.state.labels).numel())
        if epoch in getattr(self, "recluster_at", ()):
            stats.update(self.recluster(epoch, records))
        stats["phase"] = "update" if self.in_update_phase(epoch) else "fixed"
        stats.update(self.label_diagnostics())
        return stats

    def label_diagnostics(self) -> Dict[str, float]:
        """Cluster sizes; with true speaker ids, label quality and ``label_merges.csv`` (rewritten every epoch)."""
        from speechbrain.utils.distributed import if_main_process

        out: Dict[str, float] = dict(cluster_size_stats(self.state.labels))
        if self.true_labels is None:
            return out
        out.update(self.state.diagnostics(self.true_labels))
        names = self.speaker_names or []  # views.true_speaker_names, given with the true labels
        if len(names) <= int(self.true_labels.max()):
            names = [str(i) for i in range(int(self.true_labels.max()) + 1)]
        rows = label_merges(self.state.labels, self.true_labels, names, read_persons(getattr(self.hparams, "data_folder", None)))
        path = os.path.join(self.hparams.output_folder, "label_merges.csv")
        summary = write_label_merges(path, rows) if if_main_process() else {}
        out.update(summary)
        return out

    def reclusters_from_epoch(self, epoch: int) -> bool:
        """This epoch ends with a re-clustering of the teacher embeddings its relabelling recorded
        (``recluster_embeddings: epoch``)."""
        return getattr(self, "recluster_source", "pass") == "epoch" and epoch in getattr(self, "recluster_at", ())

    def keeps_embeddings(self, epoch: int) -> bool:
        """The teacher's embeddings of this epoch are recorded: for a relabelling at the epoch end, or for a
        re-clustering from them."""
        return self.relabel_cfg.at_epoch_end or self.reclusters_from_epoch(epoch)

    @torch.no_grad()
    def recluster(self, epoch: int, records: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, float]:
        """A fresh k-means of the teacher's embeddings restarts the labels (``reclustering.py``); every rank
        takes part (the embedding is sharded, k-means runs on the main process, every rank loads its saved
        result, which a resumed run reuses). With ``recluster_embeddings: epoch`` the embeddings are the epoch's
        ``records`` (all ranks'), and nothing is embedded."""
        import time

        from speechbrain_ssrl.initial_clustering import initial_clustering
        from speechbrain_ssrl.metrics import pseudo_label_report

        h = self.hparams
        noisy_fits = int(self.state.noise.noisy_fits)
        if not allows(self.recluster_condition, noisy_fits):
            logger.info("epoch %d: no re-clustering (recluster_if: %s; the noisy-label model found a noisy mode in %d "
                        "epoch(s)): the online loop goes on", epoch, self.recluster_condition, noisy_fits)
            return {"reclustered": 0, "recluster_skipped": 1, "recluster_changed": 0.0}
        t0 = time.time()
        tc = h.teacher_classifier
        targets = torch.nonzero(tc.active.detach().cpu()).flatten()
        from_labels = str(getattr(h, "recluster_init", "k-means++")) == "labels"
        given, embed_fn = None, None
        if self.reclusters_from_epoch(epoch):
            if records is None or records["emb"].shape[1] == 0:
                raise RuntimeError(f"epoch {epoch}: recluster_embeddings: epoch, but the teacher recorded no embeddings "
                                   "in this epoch (it labels only from fixed_label_epochs - queue_length // 2 on, or "
                                   "the run resumed from an older version's checkpoint); set recluster_embeddings: "
                                   "pass or re-cluster at a later epoch")
            given, filled = epoch_embeddings(records["idx"], records["emb"], self.state.labels, tc.weight.detach())
            logger.info("epoch %d: re-clustering the %d teacher embeddings the epoch recorded (%d utterances it did "
                        "not see stand in as their cluster's mean)", epoch, given.shape[0] - filled, filled)
        else:
            embed_fn = self.embed_fn(self.scoring_model(self.teacher))
        data = initial_clustering(
            embed_fn=embed_fn,
            embeddings=given,
            train_csv=h.train_annotation,
            out_dir=os.path.join(h.output_folder, "reclustering", f"epoch_{epoch}"),
            # from the labels: their clusters (all active after pruning) start k-means; else as many as are active
            k=int(torch.unique(self.state.labels).numel()) if from_labels else int(targets.numel()),
            max_seconds=getattr(h, "cluster_max_seconds", None),
            n_iter=int(getattr(h, "kmeans_iterations", 100)),
            init="labels" if from_labels else str(getattr(h, "kmeans_init", "k-means++")),
            init_labels=self.state.labels if from_labels else None,
            method=str(getattr(h, "cluster_method", "kmeans")),
            n_neighbors=int(getattr(h, "spectral_neighbors", 10)),
            merge_connectivity=getattr(self, "recluster_merge", None),
            seed=int(h.seed) + int(epoch),
            device=str(self.device),
            sample_rate=int(getattr(h, "sample_rate", 16000)),
            num_workers=int(getattr(h, "cluster_num_workers", 0) or 0),
            progress=not self.noprogressbar,
            distributed=True,
            compare_labels=self.state.labels,  # both k-means objectives are saved with it (and kept on reuse)
        )
        old = self.state.labels
        labels, mapping = map_onto(data["labels"], old, targets)
        stats: Dict[str, float] = {"recluster_agreement": float(pseudo_label_report(labels, old)["nmi"])}
        if "objective" in data:  # the k-means objective of the new labels and of those they replace (label-free)
            stats["recluster_objective"] = float(data["objective"])
            stats["labels_objective"] = float(data["compare_objective"])
        elif self.recluster_gate is not None:
            raise ValueError(f"{data['path']} was saved without the k-means objectives that recluster_max_gain needs "
                             "(an older version): delete it to recompute")
        if not accepts(stats.get("recluster_objective", 0.0), stats.get("labels_objective", 0.0), self.recluster_gate):
            stats.update(reclustered=0, recluster_rejected=1, recluster_changed=0.0,
                         recluster_seconds=round(time.time() - t0, 1))
            logger.info("epoch %d: the re-clustering's k-means objective %.4f against the labels' %.4f is outside "
                        "(0, recluster_max_gain = %g]: the labels are kept", epoch, stats["recluster_objective"],
                        stats["labels_objective"], self.recluster_gate)
            return stats
        stats["reclustered"] = 1
        stats.update(self.state.restart_from(labels))
        centroids = torch.nn.functional.normalize(data["centroids"].float(), dim=1)
        for clf in (h.classifier, tc):  # each matched row turns to its new centroid, keeping its norm
            w = clf.weight.data
            rows = mapping.to(w.device)
            w[rows] = centroids.to(w)[: rows.numel()] * w[rows].norm(dim=1, keepdim=True)
        if getattr(self, "recluster_merge", None) is not None:
            # merged clusters leave ids that own nothing: pruned now (with prune_clusters), not after the next epoch
            stats["recluster_merged"] = int(data.get("merged", 0))
            if bool(h.prune_clusters):
                newly = self.state.prune_unowned()
                if newly.numel():
                    for clf in (h.classifier, tc):
                        clf.prune(newly.to(clf.active.device))
                stats["n_pruned"] = int(self.state.pruned.sum())
            stats["n_clusters"] = int(torch.unique(self.state.labels).numel())
        stats["recluster_seconds"] = round(time.time() - t0, 1)
        logger.info("epoch %d: re-clustered the teacher's embeddings into %d clusters, %.3f of the labels changed "
                    "(NMI to the previous labels %.3f)", epoch, int(torch.unique(labels).numel()), stats["recluster_changed"],
                    stats["recluster_agreement"])
        return stats

    @torch.no_grad()
    def relabel_at_epoch_end(self, epoch: int) -> Dict[str, torch.Tensor]:
        """ŷ and λ of the epoch from the recorded teacher embeddings (``online_clustering.relabel``); with
        re-estimated prototypes, both classifiers' rows take them (active clusters only)."""
        h = self.hparams
        rec = self.state.take_epoch_records()
        idx, emb = rec["idx"], rec["emb"]
        if idx.numel() == 0 or emb.shape[1] == 0:
            return rec
        tc = h.teacher_classifier
        dev = tc.weight.device
        active = tc.active.detach().clone()
        current = self.state.labels[idx]
        y_hat, protos = relabel(emb.to(dev), current.to(dev), tc.weight.detach(), active, self.relabel_cfg)
        if protos is not None:
            for clf in (h.classifier, tc):  # new directions, each row keeping its norm (AAM normalises anyway)
                w, act = clf.weight.data, active.to(clf.weight.device)
                w[act] = protos.to(w)[act] * w[act].norm(dim=1, keepdim=True)
        y_t = self.state.teacher_targets(idx.to(dev), y_hat, use_queue=self.teacher_uses_vote(epoch))
        margin = float(getattr(h, "teacher_margin", 0.0))
        lam = torch.cat([
            tc.teacher_loss(tc.mask(tc.cosine(emb[sl].to(dev))), y_t[sl], margin=margin)
            for sl in row_chunks(idx.numel())
        ])
        return {"idx": idx, "hat": y_hat.cpu(), "loss": lam.float().cpu(), "emb": emb}

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
