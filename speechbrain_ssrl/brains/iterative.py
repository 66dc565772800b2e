"""The baseline SSRL is compared with: the two-stage iterative framework of the paper's comparison.

Round r (1..R):

1. embeddings of every training utterance from the previous round's model (round 1: the DINO
   teacher), after the same BN re-estimation on clean crops as everywhere else;
2. k-means into K clusters (:mod:`speechbrain_ssrl.initial_clustering`, saved in ``round_<r>/``);
3. a *fresh* AAM ECAPA trained from the DINO initialisation on those labels, which stay fixed for the
   whole round (classifier rows initialised from the centroids, as in SSRL);
4. next round.

:class:`IterativeBrain` trains one round. It is :class:`~speechbrain_ssrl.brains.ssrl.SSRLBrain` with
everything reflective switched off (forced, whatever the yaml says): no teacher relabelling, no label
queue (L = 1), no label updates, no pruning, no noisy-label weighting (all weights 1), one cosine
learning-rate schedule (with a linear warm-up) instead of SSRL's two segments. There is **no EMA
teacher**: the trained *student* is what is validated, exported and clustered for the next round.
(The recipe's ``teacher_model`` slot is kept so that checkpoints, validation and export share SSRL's
code; it is a plain copy of the student, refreshed at the end of every epoch, never averaged.)

:func:`run_rounds` chains the rounds, resumably: a round whose ``round_<r>/round_done.json`` exists is
skipped; an interrupted round continues from its checkpoint (and reuses its saved clustering). It
writes ``<output_folder>/history.csv`` with one row per round: ``round, eer, eer_se, min_dcf_0.01,
nmi, ari, purity, accuracy, n_clusters`` (non-empty clusters of the round's labels), the cost
``steps`` / ``total_steps`` (optimiser steps of the round / so far), ``train_seconds`` (sum of the
round's epoch times), ``cluster_seconds`` (embedding + k-means), ``wall_seconds`` (their sum) and
``total_wall_seconds``, plus ``valid_seconds``; finally it copies the last round's export to
``<output_folder>/pretrained``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Callable, Dict, Optional

import torch

import speechbrain as sb
from speechbrain.utils.distributed import if_main_process

from speechbrain_ssrl.brains.ssrl import SSRLBrain
from speechbrain_ssrl.history import History, plot_history
from speechbrain_ssrl.schedules import WarmupCosine

logger = logging.getLogger(__name__)

DONE_FILE = "round_done.json"

#: SSRL switches the baseline never uses (set on the Brain's hparams whatever the yaml says)
BASELINE_SWITCHES: Dict[str, Any] = {
    "fixed_label_epochs": 0,  # one lr segment (see IterativeBrain.on_fit_start)
    "queue_length": 1,
    "queue_tie": "oldest",
    "update_labels": False,
    "label_update_every": 1,
    "prune_clusters": False,
    "noisy_label_model": False,
    "teacher_margin": 0.0,
    "recluster_epochs": [],  # the rounds re-cluster (between runs)
    "teacher_bn": "eval",
    "ema_start": 0.0,  # unused: no EMA
    "ema_end": 0.0,
}


class IterativeBrain(SSRLBrain):
    """One round of the iterative baseline: AAM-softmax training of the student on fixed pseudo labels.

    yaml keys as SSRL's (``embedding_model``, ``classifier``, ``teacher_model``, ``teacher_classifier``,
    ``student_augment``, ``K0``, ...) plus ``lr_start``, ``lr_final``, ``warmup_epochs``. The student
    is validated and exported (no EMA teacher, see the module docstring).
    """

    #: the starting model of every round is DINO's: no validation in history row 0
    validate_at_start = False

    plot_groups = {"loss": ["loss"], "lr": ["lr"], "eer": ["eer"]}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in BASELINE_SWITCHES.items():
            old = getattr(self.hparams, key, value)
            if old != value and key not in ("ema_start", "ema_end", "fixed_label_epochs"):
                logger.warning("iterative baseline: %s=%r ignored (the baseline uses %r)", key, old, value)
            setattr(self.hparams, key, value)
        # SSRLBrain reads the fixed-label segment's lr; with 0 fixed epochs it never applies
        for key in ("lr_fix_start", "lr_fix_end"):
            setattr(self.hparams, key, getattr(self.hparams, "lr_start"))

    # ------------------------------------------------------------------ set-up
    def on_fit_start(self):
        super().on_fit_start()
        h = self.hparams
        warm = int(round(float(getattr(h, "warmup_epochs", 0.0)) * self.steps_per_epoch))
        self.lr_schedule = WarmupCosine(h.lr_start, h.lr_final, warm, self.total_steps)

    # ------------------------------------------------------------------ no teacher
    def teacher_labelling(self, epoch: int) -> bool:
        return False

    def in_update_phase(self, epoch: int) -> bool:
        return False

    def updates_labels_after(self, epoch: int) -> bool:
        return False

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """No EMA teacher."""

    def sync_teacher(self) -> None:
        """teacher slot ← student (encoder and classifier, parameters and buffers)."""
        self.init_teacher_from_student()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.sync_teacher()  # validation, checkpoint and export all see the trained student
            self.end_of_epoch(stage_loss, epoch)


# ---------------------------------------------------------------------------------------------------
# the rounds
# ---------------------------------------------------------------------------------------------------
def round_folder(output_folder: str, r: int) -> str:
    return os.path.join(output_folder, f"round_{int(r)}")


def round_done(output_folder: str, r: int) -> bool:
    return os.path.isfile(os.path.join(round_folder(output_folder, r), DONE_FILE))


def completed_rounds(output_folder: str) -> int:
    """Number of consecutive finished rounds from round 1."""
    r = 0
    while round_done(output_folder, r + 1):
        r += 1
    return r


def load_round_hparams(hparams_file: str, overrides, r: int) -> Dict[str, Any]:
    """The yaml instantiated afresh for round ``r`` (new model, classifier, optimiser state, counter,
    checkpointer in ``round_<r>/save``), with ``output_folder`` pointing at the round's folder and
    ``experiment_folder`` at the experiment's."""
    import yaml
    from hyperpyyaml import load_hyperpyyaml

    ov: Any
    if isinstance(overrides, str):
        try:
            ov = dict(yaml.safe_load(overrides) or {})
        except yaml.YAMLError:  # a value with a hyperpyyaml tag (!ref, !new:): keep the text
            kept = [ln for ln in overrides.splitlines() if not ln.startswith("round:")]
            ov = "\n".join(kept + [f"round: {int(r)}"])
    else:
        ov = dict(overrides or {})
    if isinstance(ov, dict):
        ov["round"] = int(r)
    with open(hparams_file, encoding="utf-8") as fin:
        rh = load_hyperpyyaml(fin, ov)
    rh["experiment_folder"] = rh["output_folder"]
    rh["output_folder"] = rh["round_folder"]
    os.makedirs(rh["round_folder"], exist_ok=True)
    return rh


def _float(v) -> Optional[float]:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def round_summary(brain: IterativeBrain, rh: Dict[str, Any], r: int, previous: list) -> Dict[str, object]:
    """The experiment history row of a finished round (main process)."""
    folder = rh["round_folder"]
    epochs = [row for row in History(os.path.join(folder, "history.csv")).rows() if (_float(row.get("epoch")) or 0) >= 1]
    row: Dict[str, object] = {"round": int(r), "epochs": len(epochs)}
    last = epochs[-1] if epochs else {}
    if last.get("eer") not in (None, ""):
        valid = {k: _float(last.get(k)) for k in ("eer", "eer_se", "min_dcf_0.01")}
        valid_seconds = sum(_float(x.get("valid_seconds")) or 0.0 for x in epochs)
    else:
        import time

        t0 = time.time()
        valid = brain.validate()
        valid_seconds = sum(_float(x.get("valid_seconds")) or 0.0 for x in epochs) + time.time() - t0
    row.update({k: valid.get(k) for k in ("eer", "eer_se", "min_dcf_0.01")})
    state = brain.state
    row["n_clusters"] = int(torch.unique(state.labels).numel())
    row["k"] = int(state.n_clusters)
    if brain.true_labels is not None:
        diag = state.diagnostics(brain.true_labels)
        row.update({k: diag.get(k) for k in ("nmi", "ari", "purity", "accuracy")})
    # cost
    clustering = torch.load(os.path.join(rh["clustering_folder"], "initial_clustering.pt"), map_location="cpu", weights_only=True)
    cluster_seconds = float(clustering.get("seconds_embed", 0.0)) + float(clustering.get("seconds_kmeans", 0.0))
    train_seconds = sum(_float(x.get("epoch_seconds")) or 0.0 for x in epochs)
    row["steps"] = int(brain.optimizer_step)
    row["total_steps"] = int(sum(int(float(p["steps"])) for p in previous) + row["steps"])
    row["train_seconds"] = round(train_seconds, 1)
    row["cluster_seconds"] = round(cluster_seconds, 1)
    row["wall_seconds"] = round(train_seconds + cluster_seconds, 1)
    row["total_wall_seconds"] = round(sum(float(p["wall_seconds"]) for p in previous) + row["wall_seconds"], 1)
    row["valid_seconds"] = round(valid_seconds, 1)
    return row


def run_rounds(
    hparams: Dict[str, Any],
    hparams_file: str,
    overrides,
    train_round: Callable[[Dict[str, Any], str], IterativeBrain],
) -> Dict[str, object]:
    """Runs (or resumes) rounds 1..``hparams["rounds"]``.

    ``train_round(round_hparams, source_folder)`` clusters the embeddings of the model in
    ``source_folder`` (the DINO run for round 1, ``round_<r-1>`` after) and trains and exports the
    round's model; it returns the round's Brain. Returns the experiment history's last row.
    """
    from speechbrain.utils.distributed import ddp_barrier

    out = hparams["output_folder"]
    n_rounds = int(hparams["rounds"])
    history = History(os.path.join(out, "history.csv"))
    for r in range(1, n_rounds + 1):
        if round_done(out, r):
            logger.info("iterative baseline: round %d/%d already done (%s)", r, n_rounds, round_folder(out, r))
            continue
        logger.info("iterative baseline: round %d/%d", r, n_rounds)
        rh = load_round_hparams(hparams_file, overrides, r)
        source = hparams["dino_folder"] if r == 1 else round_folder(out, r - 1)
        brain = train_round(rh, source)
        if if_main_process():
            previous = [p for p in history.rows() if int(float(p["round"])) < r]
            row = round_summary(brain, rh, r, previous)
            history.log(row, key="round")
            plot_history(history.path, os.path.join(out, "plots"),
                         {"eer": ["eer"], "label_quality": ["nmi", "purity", "accuracy"], "n_clusters": ["n_clusters"]},
                         x="round")
            with open(os.path.join(round_folder(out, r), DONE_FILE), "w", encoding="utf-8") as f:
                json.dump(row, f, indent=1)
            logger.info("iterative baseline: round %d done: %s", r,
                        {k: row[k] for k in ("eer", "nmi", "n_clusters", "steps") if k in row})
        del brain
        ddp_barrier()
    final = os.path.join(round_folder(out, n_rounds), "pretrained")
    if if_main_process() and os.path.isdir(final):
        dest = os.path.join(out, "pretrained")
        shutil.copytree(final, dest, dirs_exist_ok=True)
        logger.info("iterative baseline: the round-%d model is exported to %s", n_rounds, dest)
    ddp_barrier()
    rows = history.rows()
    return rows[-1] if rows else {}

