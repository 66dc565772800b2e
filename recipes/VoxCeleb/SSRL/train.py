#!/usr/bin/env python3
"""SSRL recipe for VoxCeleb: self-supervised speaker embeddings without speaker labels.

    python train.py hparams/dino_ecapa.yaml --data_folder=<root>                       # stage 1
    python train.py hparams/ssrl_ecapa.yaml --data_folder=<root> --dino_folder=<dir>   # stage 2
    python train.py hparams/iterative_ecapa.yaml --data_folder=<root> --dino_folder=<dir>
    torchrun --nproc_per_node=N train.py hparams/ssrl_ecapa.yaml ...                   # multi-GPU

The yaml's ``stage`` key selects the Brain (``speechbrain_ssrl.brains``). This script only prepares the
data (on the main process), builds the datasets of the stage's views, runs ``fit`` and exports the
EMA teacher to ``<output_folder>/pretrained`` (loadable with ``EncoderClassifier.from_hparams``).
Speaker labels are never used for training; the CSV's ``spk_id`` only feeds diagnostics (NMI, purity).

Method: Cai, Cai, Li, Li, IEEE/ACM TASLP 2025 (arXiv 2401.01473).
"""

import logging
import os
import sys

import torch

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from voxceleb_prepare import prepare_voxceleb  # noqa: E402

from speechbrain_ssrl import recipe_checks  # noqa: E402
from speechbrain_ssrl.brains.base import NonFiniteLossError  # noqa: E402
from speechbrain_ssrl.checkpoints import CheckpointSaveError  # noqa: E402
from speechbrain_ssrl.data import views  # noqa: E402
from speechbrain_ssrl.data.augment_data import make_augment_csv  # noqa: E402

logger = logging.getLogger(__name__)


def prepare_data(hparams):
    """VoxCeleb CSVs and the noise / RIR CSVs, on the main process only."""
    run_on_main(
        prepare_voxceleb,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "verification_pairs_file": hparams["verification_file"],
            "splits": ["train", "test"],
            "min_duration": hparams.get("min_duration", 1.0),
            "convert_m4a": hparams.get("convert_m4a", False),
            "skip_prep": hparams["skip_prep"],
        },
    )
    for folder_key, csv_key in (("noise_folder", "noise_csv"), ("rir_folder", "rir_csv")):
        if hparams.get(folder_key) and hparams.get(csv_key):
            run_on_main(make_augment_csv, kwargs={"folder": hparams[folder_key], "csv_file": hparams[csv_key]})


def brain_kwargs(hparams, run_opts):
    return dict(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )


def run_dino(hparams, run_opts):
    from speechbrain_ssrl.brains.dino import DINOBrain

    train_data = views.multicrop_dataset(
        hparams["train_annotation"],
        hparams["crop_sampler"],
        n_global=hparams["n_global"],
        global_seconds=hparams["global_seconds"],
        n_local=hparams["n_local"],
        local_seconds=hparams["local_seconds"],
        sample_rate=hparams["sample_rate"],
    )
    brain = DINOBrain(**brain_kwargs(hparams, run_opts))
    brain.fit(hparams["epoch_counter"], train_data, train_loader_kwargs=hparams["dataloader_options"])
    brain.export_teacher()
    return brain


def true_speaker_ids(csv_path):
    """Integer speaker ids from the CSV's ``spk_id`` column, for diagnostics only (None if absent)."""
    rows = views.read_csv_rows(csv_path)
    if "spk_id" not in rows[0] or not all(r.get("spk_id") for r in rows):
        return None
    names = {s: i for i, s in enumerate(sorted({r["spk_id"] for r in rows}))}
    return torch.tensor([names[r["spk_id"]] for r in rows], dtype=torch.long)


def initial_labels(brain, hparams):
    """k-means on the DINO teacher's embeddings (main process), saved and reused; loaded on every rank."""
    from speechbrain_ssrl.initial_clustering import initial_clustering

    model = brain.scoring_model(hparams["embedding_model"])
    kwargs = dict(
        embed_fn=brain.embed_fn(model),
        train_csv=hparams["train_annotation"],
        out_dir=hparams["clustering_folder"],
        k=hparams["K0"],
        max_seconds=hparams["cluster_max_seconds"],
        n_iter=hparams["kmeans_iterations"],
        init=hparams["kmeans_init"],
        seed=hparams["seed"],
        device=str(brain.device),
    )
    run_on_main(initial_clustering, kwargs=kwargs)
    return initial_clustering(**kwargs)  # every rank: loads the saved result


def run_ssrl(hparams, run_opts):
    from speechbrain_ssrl.brains.base import load_encoder
    from speechbrain_ssrl.brains.ssrl import SSRLBrain

    load_encoder(hparams["dino_folder"], hparams["embedding_model"])
    brain = SSRLBrain(**brain_kwargs(hparams, run_opts))
    init = initial_labels(brain, hparams)
    brain.setup_pseudo_labels(init["labels"], init["centroids"], true_labels=true_speaker_ids(hparams["train_annotation"]))
    train_data = views.student_teacher_dataset(
        hparams["train_annotation"],
        hparams["crop_sampler"],
        student_seconds=hparams["student_seconds"],
        teacher_seconds=hparams["teacher_seconds"],
        sample_rate=hparams["sample_rate"],
    )
    brain.fit(hparams["epoch_counter"], train_data, train_loader_kwargs=hparams["dataloader_options"])
    if hparams.get("dump_rank_state"):
        brain.dump_rank_state(os.path.join(hparams["output_folder"], "rank_state"))
    brain.export_teacher()
    return brain


def run_iterative(hparams, run_opts):
    """The iterative baseline: ``rounds`` x (cluster the previous model's embeddings → train a fresh
    model from the DINO initialisation on those fixed labels); see speechbrain_ssrl/brains/iterative.py."""
    from speechbrain_ssrl.brains.base import load_encoder
    from speechbrain_ssrl.brains.iterative import IterativeBrain, run_rounds

    def train_round(rh, source_folder):
        load_encoder(source_folder, rh["embedding_model"])  # the model whose embeddings are clustered
        brain = IterativeBrain(**brain_kwargs(rh, run_opts))
        init = initial_labels(brain, rh)
        load_encoder(rh["dino_folder"], rh["embedding_model"])  # every round trains from the DINO initialisation
        brain.setup_pseudo_labels(init["labels"], init["centroids"], true_labels=true_speaker_ids(rh["train_annotation"]))
        train_data = views.student_teacher_dataset(
            rh["train_annotation"], rh["crop_sampler"], student_seconds=rh["student_seconds"],
            teacher_seconds=rh["teacher_seconds"], sample_rate=rh["sample_rate"],
        )
        brain.fit(rh["epoch_counter"], train_data, train_loader_kwargs=rh["dataloader_options"])
        brain.export_teacher()  # the student (the baseline has no EMA teacher)
        return brain

    hparams_file, _, overrides = sb.parse_arguments(sys.argv[1:])  # each round instantiates the yaml afresh
    return run_rounds(hparams, hparams_file, overrides, train_round)


STAGES = {"dino": run_dino, "ssrl": run_ssrl, "iterative": run_iterative}


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams = recipe_checks.load_hparams(hparams_file, overrides)  # refuses unknown command-line keys
    recipe_checks.check_before_start(hparams)  # an unusable dino_folder; a resume with another architecture / K0
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    stage = hparams.get("stage")
    if stage not in STAGES:
        raise SystemExit(f"{hparams_file}: unknown or missing `stage: {stage}` (expected one of {sorted(STAGES)})")
    prepare_data(hparams)
    recipe_checks.check_training_data(hparams)  # K0 <= N; a resume keeps architecture, K0 and training CSV
    try:
        STAGES[stage](hparams, run_opts)
    except (NonFiniteLossError, CheckpointSaveError) as e:
        logger.exception("training stopped")
        raise SystemExit(f"training stopped: {e}") from None
