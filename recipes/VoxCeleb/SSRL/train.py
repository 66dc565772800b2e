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

import hashlib
import logging
import os
import shutil
import sys

import torch

import speechbrain as sb
from speechbrain.utils.distributed import ddp_barrier, if_main_process, run_on_main

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from voxceleb_prepare import prepare_voxceleb, shared_prepare_for  # noqa: E402

from speechbrain_ssrl import recipe_checks  # noqa: E402
from speechbrain_ssrl.brains.base import NonFiniteLossError  # noqa: E402
from speechbrain_ssrl.checkpoints import CheckpointSaveError  # noqa: E402
from speechbrain_ssrl.data import views  # noqa: E402
from speechbrain_ssrl.data import folder as folder_data  # noqa: E402
from speechbrain_ssrl.data.augment_data import make_augment_csv  # noqa: E402
from speechbrain_ssrl.data.voxceleb import OPT_FILE, SKIPPED_FILE, preparation_is_current  # noqa: E402

logger = logging.getLogger(__name__)


def prep_kwargs(hparams, save_folder=None):
    """The arguments of ``prepare_voxceleb`` for this run (into ``save_folder``, default the run's)."""
    return {
        "data_folder": hparams["data_folder"],
        "save_folder": save_folder or hparams["save_folder"],
        "verification_pairs_file": hparams["verification_file"],
        "splits": ["train", "test"],
        "min_duration": hparams.get("min_duration", 1.0),
        "convert_m4a": hparams.get("convert_m4a", False),
        "skip_prep": hparams["skip_prep"],
        "shared_prepare": shared_prepare_for(hparams.get("voxceleb_prepare", "auto")),
    }


def staging_folder(hparams) -> str:
    """Where a preparation is made before it is accepted: a hidden folder next to the output folder (outside
    it, on the same file system, the same on every rank)."""
    out = os.path.abspath(hparams["output_folder"]).rstrip(os.sep)
    key = hashlib.sha1(os.path.abspath(hparams["save_folder"]).encode("utf-8")).hexdigest()[:8]
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.prep-{key}")


def folder_prep_kwargs(hparams, save_folder=None):
    """The arguments of ``prepare_folder`` (``data_format: folder`` or ``csv``; speechbrain_ssrl/data/folder.py).
    yaml keys ``segment_min_seconds`` / ``segment_max_seconds`` (2 / 12 when absent), ``audio_cache_folder``
    (converted audio and the journal of prepared files; null: ``folder.default_cache_folder``), ``prep_jobs``
    (worker processes; null: all CPUs). The output, noise and RIR folders are not scanned."""
    return {
        "data_folder": hparams["data_folder"],
        "save_folder": save_folder or hparams["save_folder"],
        "data_format": hparams["data_format"],
        "sample_rate": hparams.get("sample_rate", 16000),
        "cfg": folder_data.SegmentConfig(
            min_seconds=float(hparams.get("segment_min_seconds", 2.0)),
            max_seconds=float(hparams.get("segment_max_seconds", 12.0)),
        ),
        "cache_folder": hparams.get("audio_cache_folder"),
        "exclude": [hparams["output_folder"], hparams.get("noise_folder"), hparams.get("rir_folder")],
        "jobs": hparams.get("prep_jobs"),
        "skip_prep": hparams["skip_prep"],
    }


def data_preparation(hparams):
    """(prepare, is_current, kwargs) for the yaml's ``data_format``: ``voxceleb`` (the default: VoxCeleb
    layout and trial list), ``folder`` (any folder of recordings) or ``csv`` (a CSV ``ID,wav[,start,stop]``)."""
    fmt = hparams.get("data_format", "voxceleb")
    if fmt == "voxceleb":
        return prepare_voxceleb, preparation_is_current, prep_kwargs
    if fmt in ("folder", "csv"):
        return folder_data.prepare_folder, folder_data.folder_preparation_is_current, folder_prep_kwargs
    raise recipe_checks.RefusedError(
        f"--data_format={fmt}: not a data format. Fix: pass voxceleb (wav/<speaker>/<video>/<n>.wav), folder "
        "(any folder of recordings) or csv (a CSV of ID,wav[,start,stop])"
    )


def prepare_and_check_data(hparams):
    """The data preparation and its checks (K0 and batch_size against N; on a resume, the same training
    CSV), before anything is written into the output folder. Returns the staging folder holding a new
    preparation to adopt (``adopt_preparation``), or None when the run's preparation is current."""
    prepare, is_current, kwargs_of = data_preparation(hparams)
    if is_current(**kwargs_of(hparams)):
        recipe_checks.check_training_data(hparams, write=False)
        return None
    staging = staging_folder(hparams)
    if if_main_process() and os.path.isdir(staging):
        shutil.rmtree(staging)
    try:
        run_on_main(prepare, kwargs=kwargs_of(hparams, staging))
        recipe_checks.check_training_data(hparams, csv_path=os.path.join(staging, "train.csv"), write=False)
    except BaseException:  # a refusal, or a preparation that failed (e.g. bad test files): nothing stays behind
        if if_main_process():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def adopt_preparation(staging, save_folder) -> None:
    """Moves a checked preparation into the run's ``save_folder`` (its options file last: it marks it complete)."""
    if if_main_process():
        os.makedirs(save_folder, exist_ok=True)
        names = sorted(os.listdir(staging), key=lambda n: n in (OPT_FILE, folder_data.OPT_FILE))
        for name in names:
            shutil.move(os.path.join(staging, name), os.path.join(save_folder, name))
        shutil.rmtree(staging, ignore_errors=True)
        skipped = os.path.join(save_folder, SKIPPED_FILE)
        n = sum(1 for _ in open(skipped, encoding="utf-8")) if os.path.isfile(skipped) else 0
        summary = os.path.join(save_folder, folder_data.LOG_FILE)  # data_format folder / csv: what was prepared
        if os.path.isfile(summary):
            with open(summary, encoding="utf-8") as f:
                for line in f:
                    logger.info("data preparation: %s", line.rstrip("\n"))
        logger.info("data preparation moved into %s (%d file(s) left out, listed in %s)", save_folder, n, skipped)
    ddp_barrier()


def prepare_augment_data(hparams):
    """The noise / RIR CSVs, on the main process only."""
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

    if hparams.get("export_untrained"):  # the random-init yardstick: no training, the encoder as initialised
        brain = DINOBrain(**brain_kwargs(hparams, run_opts))
        brain.export_untrained()
        return brain
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


def initial_labels(brain, hparams):
    """k-means on the DINO teacher's embeddings, saved and reused. Under DDP every rank embeds its share of the
    training files (``cluster_num_workers`` DataLoader workers each) and all-gathers; k-means runs on the main
    process and every rank loads the saved result. The labels are those of a single process."""
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
        method=hparams.get("cluster_method", "kmeans"),
        n_neighbors=hparams.get("spectral_neighbors", 10),
        seed=hparams["seed"],
        device=str(brain.device),
        sample_rate=hparams["sample_rate"],
        num_workers=hparams.get("cluster_num_workers", 0),  # how the audio is read; the embeddings are the same
        distributed=True,  # every rank takes part (no run_on_main)
    )
    return initial_clustering(**kwargs)


def run_ssrl(hparams, run_opts):
    from speechbrain_ssrl.brains.base import load_encoder
    from speechbrain_ssrl.brains.ssrl import SSRLBrain

    load_encoder(hparams["dino_folder"], hparams["embedding_model"])
    brain = SSRLBrain(**brain_kwargs(hparams, run_opts))
    init = initial_labels(brain, hparams)
    true_ids, true_names = views.true_speakers(hparams["train_annotation"])  # diagnostics only
    brain.setup_pseudo_labels(init["labels"], init["centroids"], true_labels=true_ids, speaker_names=true_names)
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
        true_ids, true_names = views.true_speakers(rh["train_annotation"])  # diagnostics only
        brain.setup_pseudo_labels(init["labels"], init["centroids"], true_labels=true_ids, speaker_names=true_names)
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


def holds_no_file(folder) -> bool:
    """Whether ``folder`` is missing or holds only (empty) folders."""
    return not any(files for _, _, files in os.walk(folder))


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    # every check runs before the output folder is touched: a refused run leaves it as it was
    hparams = recipe_checks.load_hparams(hparams_file, overrides)  # unknown keys; number_of_epochs, batch_size, K0
    stage = hparams.get("stage")
    if stage not in STAGES:
        raise recipe_checks.RefusedError(
            f"{hparams_file}: unknown or missing `stage: {stage}` (expected one of {sorted(STAGES)})"
        )
    out = hparams["output_folder"]
    fresh = holds_no_file(out)  # loading the yaml made only empty folders (the checkpointer's save/)
    try:
        recipe_checks.check_before_start(hparams)  # an unusable / untrained dino_folder; a resume with another model
        staging = prepare_and_check_data(hparams)  # K0, batch_size <= N; a resume keeps the training CSV
    except BaseException:  # refused or failed before any work: remove the empty folders loading the yaml made
        if fresh and if_main_process() and holds_no_file(out):
            shutil.rmtree(out, ignore_errors=True)
        raise
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    if staging is not None:
        adopt_preparation(staging, hparams["save_folder"])
    prepare_augment_data(hparams)
    recipe_checks.check_training_data(hparams)  # writes run_settings.json at a fresh start
    try:
        STAGES[stage](hparams, run_opts)
    except (NonFiniteLossError, CheckpointSaveError) as e:
        logger.exception("training stopped")
        raise SystemExit(f"training stopped: {e}") from None


if __name__ == "__main__":
    recipe_checks.run_script(main, sys.argv[1:], "train.py")
