"""The per-utterance pseudo-label state of SSRL stage 2 and its end-of-epoch update.

``PseudoLabelState`` holds, for the N training utterances: the current labels ``y`` (what the student
trains on), the label queues (``label_queue.PseudoLabelQueue``), the clean probabilities
(``noisy_labels.NoisyLabelModel``), and the teacher's records of the running epoch (utterance index,
nearest prototype ŷ, teacher loss λ). At the end of an epoch, ``end_epoch`` all-gathers the records
from every DDP rank (so all ranks hold identical state), pushes ŷ into the queues, optionally replaces
``y`` by the queue votes and lists the clusters that own no utterance (to be pruned), and refits the
noisy-label GMM on λ.

True speaker ids, when given, are used only by ``diagnostics`` (NMI, purity, accuracy, the clean
detector's confusion counts) and never by any update.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from speechbrain.utils.distributed import is_distributed_initialized as _dist

from speechbrain_ssrl.distributed import all_gather_cat  # noqa: F401 (also imported from here)
from speechbrain_ssrl.state import StateRecoverable

from speechbrain_ssrl.label_queue import PseudoLabelQueue, changed_fraction
from speechbrain_ssrl.noisy_labels import NoisyLabelModel


class PseudoLabelState(StateRecoverable):
    """Labels, queues, clean probabilities and the running epoch's teacher records.

    Args:
        initial_labels: k-means labels y0 (N,).
        n_clusters: K0 (number of prototypes).
        queue_length: L (1 = no queue).
        queue_tie: "oldest" or "newest" (tie rule of the vote).
        noisy_label_model: False = the "without noisy-label modelling" ablation (all weights 1).
        gmm_kwargs: passed to ``NoisyLabelModel``.
    """

    def __init__(
        self,
        initial_labels: torch.Tensor,
        n_clusters: int,
        queue_length: int = 5,
        queue_tie: str = "oldest",
        noisy_label_model: bool = True,
        gmm_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        y0 = torch.as_tensor(initial_labels).to(torch.long).cpu()
        self.n_clusters = int(n_clusters)
        self.y0 = y0.clone()
        self.labels = y0.clone()
        self.queue = PseudoLabelQueue(y0, length=queue_length, tie=queue_tie)
        self.noise = NoisyLabelModel(y0.numel(), enabled=noisy_label_model, **(gmm_kwargs or {}))
        self.pruned = torch.zeros(self.n_clusters, dtype=torch.bool)
        self._rec_idx: List[torch.Tensor] = []
        self._rec_hat: List[torch.Tensor] = []
        self._rec_loss: List[torch.Tensor] = []
        self._rec_emb: List[torch.Tensor] = []  # teacher embeddings (fp16), only when relabelling at the epoch end
        #: the last label-fixed epoch when the Brain ends that phase by a measured agreement (None: not yet)
        self.fixed_end_epoch: Optional[int] = None

    @property
    def n(self) -> int:
        return self.labels.numel()

    # ------------------------------------------------------------------ per batch
    def targets(self, indices: torch.Tensor) -> torch.Tensor:
        """Current labels of a batch (on the device of ``indices``)."""
        return self.labels[indices.cpu()].to(indices.device)

    def weights(self, indices: torch.Tensor) -> torch.Tensor:
        """Clean probabilities of a batch (on the device of ``indices``)."""
        return self.noise.weights(indices.cpu()).to(indices.device)

    def teacher_targets(self, indices: torch.Tensor, y_hat: torch.Tensor, use_queue: bool) -> torch.Tensor:
        """ỹ: ``mode(Q_n + [ŷ_n])`` in the label-update phase, else ŷ itself."""
        if not use_queue:
            return y_hat
        out = self.queue.peek_vote(indices.cpu(), y_hat.cpu(), exclude=self.pruned)
        out = torch.where(out < 0, y_hat.cpu(), out)
        return out.to(y_hat.device)

    def record(
        self, indices: torch.Tensor, y_hat: torch.Tensor, teacher_loss: torch.Tensor, embeddings: Optional[torch.Tensor] = None
    ) -> None:
        """Keeps the teacher's relabelling of a batch until the end of the epoch (and its embeddings, in
        fp16, when ŷ is recomputed at the epoch end: ``online_clustering.RelabelConfig.at_epoch_end``)."""
        self._rec_idx.append(indices.detach().to("cpu", torch.long))
        self._rec_hat.append(y_hat.detach().to("cpu", torch.long))
        self._rec_loss.append(teacher_loss.detach().float().cpu())
        if embeddings is not None:
            self._rec_emb.append(embeddings.detach().to("cpu", torch.float16))

    def n_recorded(self) -> int:
        return sum(t.numel() for t in self._rec_idx)

    def record_mark(self) -> int:
        """A position in the running epoch's records (take it before a batch; see ``discard_records``)."""
        return len(self._rec_idx)

    def discard_records(self, mark: int) -> int:
        """Drops the records made since ``record_mark()`` returned ``mark`` (a skipped batch); returns how many."""
        n = sum(t.numel() for t in self._rec_idx[mark:])
        del self._rec_idx[mark:], self._rec_hat[mark:], self._rec_loss[mark:]
        if len(self._rec_emb) > mark:
            del self._rec_emb[mark:]
        return n

    def _local_records(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's records of the running epoch, concatenated: indices, teacher labels, losses."""
        cat = lambda xs, dt: torch.cat(xs) if xs else torch.zeros(0, dtype=dt)  # noqa: E731
        return cat(self._rec_idx, torch.long), cat(self._rec_hat, torch.long), cat(self._rec_loss, torch.float32)

    def _local_embeddings(self) -> torch.Tensor:
        """This rank's recorded teacher embeddings (n, D) in fp16; (0, 0) when none are kept."""
        return torch.cat(self._rec_emb) if self._rec_emb else torch.zeros(0, 0, dtype=torch.float16)

    def _take_all_records(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every rank's records (rank order; collective under DDP): indices, teacher labels, losses and the
        fp16 embeddings ((n, 0) when none are kept); this rank's own are cleared."""
        idx, hat, loss = (all_gather_cat(t) for t in self._local_records())
        emb = self._local_embeddings()
        d = int(all_gather_cat(torch.tensor([emb.shape[1]])).max())
        emb = all_gather_cat(emb.reshape(-1)).reshape(idx.numel(), d)
        self._rec_idx, self._rec_hat, self._rec_loss, self._rec_emb = [], [], [], []
        return idx, hat, loss, emb

    def take_epoch_records(self) -> Dict[str, torch.Tensor]:
        """Every rank's records of the epoch with the teacher embeddings (collective under DDP), for a
        relabelling at the epoch end; give the (changed) records back to ``end_epoch(records=...)``.
        Keys ``idx``, ``hat``, ``loss``, ``emb`` (float32 (n, D); (n, 0) when none were recorded)."""
        idx, hat, loss, emb = self._take_all_records()
        return {"idx": idx, "hat": hat, "loss": loss, "emb": emb.float()}

    def gather_records_to_main(self) -> int:
        """Under DDP, before an intra-epoch checkpoint (collective: every rank calls it, as SpeechBrain
        does with ``_save_intra_epoch_ckpt``): rank 0 takes every rank's records of the running epoch and
        the other ranks drop theirs, so the checkpoint, which rank 0 writes, holds all of them and the
        end-of-epoch gather still counts each record once. Returns the number of records rank 0 holds."""
        if not _dist():
            return self.n_recorded()
        idx, hat, loss, emb = self._take_all_records()
        if torch.distributed.get_rank() == 0 and idx.numel():
            self._rec_idx, self._rec_hat, self._rec_loss = [idx], [hat], [loss]
            self._rec_emb = [emb] if emb.shape[1] else []
        return int(idx.numel())

    # ------------------------------------------------------------------ end of epoch
    def end_epoch(
        self, update_labels: bool, prune: bool, records: Optional[Dict[str, torch.Tensor]] = None
    ) -> Dict[str, Any]:
        """Gathers the records of all ranks (or takes ``records`` from ``take_epoch_records``, relabelled),
        pushes them into the queues, updates labels / pruning / GMM.

        Returns statistics, ``newly_pruned`` (LongTensor of cluster ids to prune in the classifiers) and
        ``previous_labels`` (the labels before this update).
        """
        if records is None:
            idx, hat, loss, _ = self._take_all_records()
        else:
            idx, hat, loss = records["idx"], records["hat"], records["loss"]
        stats: Dict[str, Any] = {"n_relabelled": int(idx.numel()), "previous_labels": self.labels}
        newly = torch.zeros(0, dtype=torch.long)
        if idx.numel():
            self.queue.push(idx, hat)
            stats["hat_changed"] = changed_fraction(self.labels[idx], hat)
        if update_labels:
            old = self.labels
            new = self.queue.vote(exclude=self.pruned)
            new = torch.where(new < 0, old, new)
            self.labels = new
            stats["labels_changed"] = changed_fraction(old, new)
            if prune:
                newly = self.prune_unowned()
        else:
            stats["labels_changed"] = 0.0
        if idx.numel() >= 2:
            g = self.noise.update(idx, loss, n_classes=int((~self.pruned).sum()))
            stats.update({"mean_p": g["mean_p"], "frac_noisy": g["frac_noisy"],
                          "gmm_gated": float(bool(g.get("gmm_gated", False))),
                          "gmm_noisy_fraction": float(g.get("gmm_noisy_fraction", float("nan")))})
        else:
            s = self.noise.stats()
            stats.update({"mean_p": s["mean_p"], "frac_noisy": s["frac_noisy"]})
        stats["n_clusters"] = int(torch.unique(self.labels).numel())
        stats["n_pruned"] = int(self.pruned.sum())
        stats["newly_pruned"] = newly
        self._last_idx, self._last_hat = idx, hat
        return stats

    def prune_unowned(self) -> torch.Tensor:
        """Marks every cluster that owns no utterance under the current labels as pruned (permanently) and returns
        the ids pruned now (LongTensor, ascending), for the classifiers to prune too."""
        owned = torch.zeros(self.n_clusters, dtype=torch.bool)
        owned[self.labels] = True
        newly = torch.nonzero(~owned & ~self.pruned).flatten()
        self.pruned |= ~owned
        return newly

    def restart_from(self, labels: torch.Tensor) -> Dict[str, float]:
        """Labels, queues and clean probabilities restart from ``labels`` as the run did from y0 (the queues
        seeded with the same number of copies, every clean probability 1; y0, pruning and the running
        epoch's records are kept): a re-clustering inside the run (``reclustering.py``). Returns the fraction
        of labels that changed."""
        new = torch.as_tensor(labels).to("cpu", torch.long)
        if new.shape != self.labels.shape:
            raise ValueError(f"labels must have shape {tuple(self.labels.shape)}, got {tuple(new.shape)}")
        if new.numel() and (int(new.min()) < 0 or int(new.max()) >= self.n_clusters or bool(self.pruned[new].any())):
            raise ValueError("labels must be ids of active clusters")
        changed = changed_fraction(self.labels, new)
        q = self.queue
        self.queue = PseudoLabelQueue(new, length=q.length, seed_copies=q.seed_copies, tie=q.tie)
        self.labels = new.clone()
        self.noise.p.fill_(1.0)
        return {"recluster_changed": changed}

    # ------------------------------------------------------------------ diagnostics (true labels)
    def diagnostics(self, true_labels: torch.Tensor) -> Dict[str, Any]:
        """NMI / purity / accuracy of the current labels and the clean detector's TP/FP/TN/FN.

        A sample's label counts as "correct" when its cluster's majority true speaker is its own.
        """
        from speechbrain_ssrl.label_diagnostics import detector_rates, label_correct
        from speechbrain_ssrl.metrics import pseudo_label_report

        t = torch.as_tensor(true_labels).to(torch.long).cpu()
        rep = pseudo_label_report(self.labels, t)
        out = {k: rep[k] for k in ("nmi", "ari", "purity", "accuracy") if k in rep}
        correct = label_correct(self.labels, t)
        out["label_correct"] = float(correct.double().mean())
        idx = getattr(self, "_last_idx", None)
        if idx is not None and idx.numel():
            # the teacher's raw assignments of the last labelling epoch, before the queue vote
            hat = pseudo_label_report(self._last_hat, t[idx])
            out.update({"hat_nmi": hat["nmi"], "hat_purity": hat["purity"]})
            if self.noise.enabled:
                conf = self.noise.detector_confusion(idx, correct[idx])
                out.update(conf)
                out.update(detector_rates(conf))
        return out

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        idx, hat, loss = self._local_records()
        return {
            "y0": self.y0.clone(),
            "labels": self.labels.clone(),
            "pruned": self.pruned.clone(),
            "n_clusters": self.n_clusters,
            "queue": self.queue.state_dict(),
            "noise": self.noise.state_dict(),
            "rec_idx": idx,
            "rec_hat": hat,
            "rec_loss": loss,
            "rec_emb": self._local_embeddings(),
            "fixed_end_epoch": -1 if self.fixed_end_epoch is None else int(self.fixed_end_epoch),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if int(state["n_clusters"]) != self.n_clusters or state["labels"].numel() != self.n:
            raise ValueError(
                f"checkpoint has N={state['labels'].numel()} utterances and K0={state['n_clusters']} clusters, "
                f"this run N={self.n}, K0={self.n_clusters}: the training CSV or K0 changed; "
                "use a new output_folder or restore the original settings"
            )
        self.y0 = state["y0"].clone()
        self.labels = state["labels"].clone()
        self.pruned = state["pruned"].clone()
        self.queue.load_state_dict(state["queue"])
        self.noise.load_state_dict(state["noise"])
        self._rec_idx = [state["rec_idx"]] if state["rec_idx"].numel() else []
        self._rec_hat = [state["rec_hat"]] if state["rec_hat"].numel() else []
        self._rec_loss = [state["rec_loss"]] if state["rec_loss"].numel() else []
        emb = state.get("rec_emb")  # absent in checkpoints of older versions
        end = int(state.get("fixed_end_epoch", -1))  # idem
        self.fixed_end_epoch = None if end < 0 else end
        self._rec_emb = [emb] if emb is not None and emb.numel() else []
        if _dist() and torch.distributed.get_rank() != 0:
            # every rank reads the same checkpoint, but only rank 0 holds the running epoch's records
            # (gather_records_to_main): a copy on each rank would be counted world-size times
            self._rec_idx, self._rec_hat, self._rec_loss, self._rec_emb = [], [], [], []

