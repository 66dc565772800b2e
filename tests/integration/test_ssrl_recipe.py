"""Stage 2 (SSRL) recipe on a CI-size MiniVox: label updates, pruning, history, export, resume."""

import math
import os

import pytest
import torch

from recipe_utils import TINY_ECAPA, history, run_recipe


def test_ssrl_updates_labels_prunes_and_exports(minivox_ci, dino_ci, tmp_path):
    out = str(tmp_path / "ssrl")
    args = [f"--data_folder={minivox_ci}", f"--dino_folder={dino_ci}", f"--output_folder={out}", "--K0=24",
            "--fixed_label_epochs=2", "--relabel_assignment=nearest",  # the paper's rule (the MiniVox default votes, knn)
            "--prune_clusters=True",  # the paper's pruning (the MiniVox default keeps emptied clusters)
            # a toy model moves slowly: a fast teacher and high lr make the labels change within 4 epochs
            "--lr_fix_start=0.01", "--lr_start=0.01", "--ema_start=0.5", "--ema_end=0.9", *TINY_ECAPA]
    run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", *args, "--number_of_epochs=4")
    rows = history(out)
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[0]["phase"] == "start" and rows[0]["n_clusters"] == "24"
    assert all(math.isfinite(float(r["loss"])) for r in rows[1:])
    # labels fixed during the first two epochs, then replaced by the queue votes
    assert float(rows[1]["labels_changed"]) == 0.0
    assert max(float(r["labels_changed"]) for r in rows[2:]) > 0.0
    assert int(rows[-1]["n_pruned"]) >= 1 and int(rows[-1]["n_clusters"]) < 24
    for key in ("nmi", "purity", "accuracy", "mean_p", "TP", "eer"):
        assert rows[-1][key] != "", key
    for f in ("plots/n_clusters.png", "plots/label_quality.png", "plots/clean_probability.png",
              "pretrained/hyperparams.yaml", "pretrained/embedding_model.ckpt", "initial_clustering/initial_clustering.pt"):
        assert os.path.exists(os.path.join(out, f)), f
    # the checkpoint holds the whole pseudo-label state
    ckpts = [d for d in os.listdir(os.path.join(out, "save")) if d.startswith("CKPT+")]
    state = torch.load(os.path.join(out, "save", ckpts[0], "pseudo_labels.ckpt"), weights_only=True)
    assert state["pruned"].sum() == int(rows[-1]["n_pruned"])
    # resume: one more epoch continues at epoch 5 with the restored state
    proc = run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", *args, "--number_of_epochs=5")
    assert "Going into epoch 1" not in proc.stdout + proc.stderr
    rows = history(out)
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert int(rows[-1]["n_pruned"]) >= int(rows[-2]["n_pruned"])


def test_ssrl_refuses_missing_dino_teacher(minivox_ci, tmp_path):
    proc = run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", f"--data_folder={minivox_ci}",
                      f"--dino_folder={tmp_path}", f"--output_folder={tmp_path / 'o'}", *TINY_ECAPA, check=False)
    assert proc.returncode != 0 and "no usable teacher" in proc.stdout + proc.stderr


def test_ssrl_epoch_end_relabelling_and_diagnostics(minivox_ci, dino_ci, tmp_path):
    """Prototype re-estimation (means + Lloyd steps), teacher BN re-estimated on clean crops and an lr warm-up:
    the run trains, relabels and writes every diagnostic column and label_merges.csv."""
    out = str(tmp_path / "ssrl_km")
    args = [f"--data_folder={minivox_ci}", f"--dino_folder={dino_ci}", f"--output_folder={out}", "--K0=24",
            "--fixed_label_epochs=3", "--lr_fix_start=0.01", "--lr_fix_end=0.001", "--lr_start=0.01",
            "--ema_start=0.5", "--ema_end=0.9", "--relabel_prototypes=kmeans", "--relabel_kmeans_iterations=2",
            "--teacher_bn=recal", "--update_warmup_epochs=0.5", "--validate_every=0", *TINY_ECAPA,
            # a k-means start: the MiniVox default's spectral start already follows the k-NN graph that the
            # neighbourhood vote reads, so on this tiny corpus nothing would be relabelled to check
            "--cluster_method=kmeans"]
    run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", *args, "--number_of_epochs=4")
    rows = history(out)
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert not rows[0].get("eer")  # validate_every 0: no validation, the start's neither
    for key in ("hat_nmi", "hat_purity", "size_min", "size_median", "size_max", "clean_precision", "clean_recall",
                "max_speakers_per_home", "hat_changed"):
        assert rows[-1][key] != "", key
    assert rows[3]["phase"] == "fixed" and rows[4]["phase"] == "update"
    # the teacher labels from epoch fixed_label_epochs - queue_length // 2 on (empty before: nothing recorded)
    labelled = [r for r in rows[1:] if r["hat_changed"] != ""]
    assert labelled and labelled[-1]["epoch"] == "4"
    assert max(float(r["hat_changed"]) for r in labelled) > 0.0  # the re-estimated prototypes relabel
    with open(os.path.join(out, "label_merges.csv")) as f:
        assert f.readline().startswith("cluster,n_speakers,same_person_pairs,different_person_pairs,speakers")
        named = " ".join(line.rstrip("\n").split(",", 4)[4] for line in f)
    from speechbrain_ssrl.data.views import true_speaker_names  # the speakers are named by the CSV's spk_id

    assert set(named.replace(";", " ").split()) <= set(true_speaker_names(os.path.join(out, "save", "train.csv")))


def test_ssrl_sinkhorn_and_release_teacher_rule(minivox_ci, dino_ci, tmp_path):
    out = str(tmp_path / "ssrl_sk")
    args = [f"--data_folder={minivox_ci}", f"--dino_folder={dino_ci}", f"--output_folder={out}", "--K0=24",
            "--fixed_label_epochs=1", "--queue_length=1", "--lr_fix_start=0.01", "--lr_start=0.01", "--ema_start=0.5",
            "--ema_end=0.9", "--relabel_assignment=sinkhorn", "--teacher_rule=margin_at_label",
            "--relabel_min_margin=0.01", "--validate_every=0", *TINY_ECAPA]
    run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", *args, "--number_of_epochs=2")
    rows = history(out)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert all(math.isfinite(float(r["loss"])) for r in rows[1:])
    assert rows[-1]["hat_nmi"] != ""


def test_ssrl_label_fixed_phase_ended_by_agreement(minivox_ci, dino_ci, tmp_path):
    """fixed_until_agreement: an agreement no teacher reaches keeps the labels fixed until
    fixed_label_max_epochs; the measured agreement is logged for every epoch that could end the phase."""
    out = str(tmp_path / "ssrl_agree")
    args = [f"--data_folder={minivox_ci}", f"--dino_folder={dino_ci}", f"--output_folder={out}", "--K0=24",
            "--fixed_label_epochs=1", "--fixed_until_agreement=1.01", "--fixed_label_max_epochs=2",
            "--lr_fix_start=0.01", "--lr_fix_end=0.01", "--lr_start=0.01", "--ema_start=0.5", "--ema_end=0.9",
            "--validate_every=0", *TINY_ECAPA]
    run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", *args, "--number_of_epochs=3")
    rows = history(out)
    assert [r["phase"] for r in rows[1:]] == ["fixed", "fixed", "update"]
    assert float(rows[1]["labels_changed"]) == 0.0
    assert all(0.0 <= float(r["teacher_agreement"]) <= 1.0 for r in rows[1:3]) and rows[3]["teacher_agreement"] == ""


def test_ssrl_reclusters_inside_the_run(minivox_ci, dino_ci, tmp_path):
    """recluster_epochs: after epoch 2 a fresh k-means of the teacher's embeddings restarts the labels (saved
    under reclustering/epoch_2/, logged in history.csv); the run goes on and a resume keeps the restart."""
    out = str(tmp_path / "ssrl_rc")
    args = [f"--data_folder={minivox_ci}", f"--dino_folder={dino_ci}", f"--output_folder={out}", "--K0=24",
            "--fixed_label_epochs=1", "--lr_fix_start=0.01", "--lr_start=0.01", "--ema_start=0.5", "--ema_end=0.9",
            "--recluster_epochs=[2]", "--recluster_every=0", "--recluster_if=always", "--validate_every=0", *TINY_ECAPA]
    run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", *args, "--number_of_epochs=3")
    rows = history(out)
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    assert [r.get("reclustered", "") for r in rows] == ["", "", "1", ""]
    assert 0.0 < float(rows[2]["recluster_changed"]) <= 1.0 and 0.0 <= float(rows[2]["recluster_agreement"]) <= 1.0
    assert -1.0 <= float(rows[2]["labels_objective"]) <= 1.0 and -1.0 <= float(rows[2]["recluster_objective"]) <= 1.0
    saved = torch.load(os.path.join(out, "reclustering", "epoch_2", "initial_clustering.pt"), weights_only=False)
    # the MiniVox default prunes nothing (prune_clusters: False): the re-clustering asks for all K0 clusters
    assert saved["k"] == 24 and int(rows[2]["n_pruned"]) == 0
    ckpt = sorted(d for d in os.listdir(os.path.join(out, "save")) if d.startswith("CKPT+"))[-1]
    state = torch.load(os.path.join(out, "save", ckpt, "pseudo_labels.ckpt"), weights_only=True)
    restarted = state["queue"]["initial"]  # the queues were seeded with the re-clustered labels
    assert not torch.equal(restarted, state["y0"]) and torch.unique(restarted).numel() <= saved["k"]
    # resume: epoch 4 continues from the restarted state; epoch 2's re-clustering is not redone
    proc = run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", *args, "--number_of_epochs=4")
    assert "Going into epoch 1" not in proc.stdout + proc.stderr and "re-clustered" not in proc.stdout + proc.stderr
    assert [r.get("reclustered", "") for r in history(out)] == ["", "", "1", "", ""]
    assert saved["config"]["embeddings"] == "computed"
    # recluster_init: labels: k-means starts from the current labels' clusters; recluster_embeddings: epoch: of the
    # teacher embeddings the epoch recorded (here with the batch-wise nearest relabelling, which keeps none itself)
    out2 = str(tmp_path / "ssrl_rc_labels")
    proc = run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", *[a.replace(out, out2) for a in args],
                      "--recluster_init=labels", "--cluster_method=kmeans", "--recluster_embeddings=epoch",
                      "--relabel_assignment=nearest",
                      "--number_of_epochs=3")
    saved = torch.load(os.path.join(out2, "reclustering", "epoch_2", "initial_clustering.pt"), weights_only=False)
    assert saved["config"]["init"] == "labels" and history(out2)[2]["reclustered"] == "1"
    assert saved["config"]["embeddings"] == "given" and "teacher embeddings the epoch recorded" in proc.stdout + proc.stderr
    # recluster_max_gain: a gain above 1e-12 keeps the labels (the queues are not restarted: still seeded from y0)
    out3 = str(tmp_path / "ssrl_rc_gate")
    run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", *[a.replace(out, out3) for a in args],
               "--recluster_max_gain=1e-12", "--number_of_epochs=3")
    row = history(out3)[2]
    assert (row["reclustered"], row["recluster_rejected"], float(row["recluster_changed"])) == ("0", "1", 0.0)
    saved = torch.load(os.path.join(out3, "reclustering", "epoch_2", "initial_clustering.pt"), weights_only=False)
    assert float(row["recluster_objective"]) == pytest.approx(saved["objective"])
    assert float(row["labels_objective"]) == pytest.approx(saved["compare_objective"])
    ckpt = sorted(d for d in os.listdir(os.path.join(out3, "save")) if d.startswith("CKPT+"))[-1]
    state = torch.load(os.path.join(out3, "save", ckpt, "pseudo_labels.ckpt"), weights_only=True)
    assert torch.equal(state["queue"]["initial"], state["y0"])


def test_ssrl_cluster_method_spectral(minivox_ci, dino_ci, tmp_path):
    """cluster_method: spectral: the initial clustering and the re-clustering of epoch 2 are spectral clusterings of
    the k-NN graph (saved config), the run trains on; recluster_init: labels with it is refused in one line."""
    out = str(tmp_path / "ssrl_spectral")
    args = [f"--data_folder={minivox_ci}", f"--dino_folder={dino_ci}", f"--output_folder={out}", "--K0=24",
            "--fixed_label_epochs=1", "--lr_fix_start=0.01", "--lr_start=0.01", "--ema_start=0.5", "--ema_end=0.9",
            "--recluster_epochs=[2]", "--recluster_every=0", "--recluster_if=always", "--validate_every=0", *TINY_ECAPA,
            "--cluster_method=spectral", "--spectral_neighbors=5"]
    run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", *args, "--number_of_epochs=3")
    for sub in ("initial_clustering", os.path.join("reclustering", "epoch_2")):
        saved = torch.load(os.path.join(out, sub, "initial_clustering.pt"), weights_only=False)
        assert (saved["config"]["method"], saved["config"]["n_neighbors"]) == ("spectral", 5), sub
        assert not torch.isnan(saved["centroids"]).any()
    assert [r.get("reclustered", "") for r in history(out)] == ["", "", "1", ""]
    proc = run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", *[a.replace(out, out + "_bad") for a in args],
                      "--recluster_init=labels", "--number_of_epochs=3", check=False)
    assert proc.returncode != 0 and "recluster_init: labels is k-means only" in proc.stdout + proc.stderr


def _never_noisy_run(minivox_ci, dino_ci, out, min_fraction):
    """Three epochs, one label-fixed, a listed re-clustering after epoch 2 under recluster_if: never_noisy, a GMM
    floor of 0 (every fitted GMM has a noisy mode above it) and the given gmm_noisy_min_fraction; history rows."""
    run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", f"--data_folder={minivox_ci}", f"--dino_folder={dino_ci}",
               f"--output_folder={out}", "--K0=24", "--fixed_label_epochs=1", "--lr_fix_start=0.01", "--lr_start=0.01",
               "--ema_start=0.5", "--ema_end=0.9", "--recluster_epochs=[2]", "--recluster_every=0", "--recluster_if=never_noisy",
               "--gmm_noisy_floor=0", f"--gmm_noisy_min_fraction={min_fraction}", "--validate_every=0", *TINY_ECAPA,
               "--number_of_epochs=3")
    return history(out)


def test_ssrl_recluster_if_never_noisy_skips_after_a_noisy_mode(minivox_ci, dino_ci, tmp_path):
    """recluster_if: never_noisy: with a floor of 0 every fitted GMM has a noisy mode, so epoch 1's fit counts and
    epoch 2's listed re-clustering is skipped before anything is embedded (no reclustering/ folder); the count
    is checkpointed."""
    out = str(tmp_path / "ssrl_rc_if")
    rows = _never_noisy_run(minivox_ci, dino_ci, out, min_fraction=0)
    assert rows[1]["gmm_gated"] == "0"
    assert (rows[2]["reclustered"], rows[2]["recluster_skipped"], float(rows[2]["recluster_changed"])) == ("0", "1", 0.0)
    assert not os.path.exists(os.path.join(out, "reclustering"))
    ckpt = sorted(d for d in os.listdir(os.path.join(out, "save")) if d.startswith("CKPT+"))[-1]
    state = torch.load(os.path.join(out, "save", ckpt, "pseudo_labels.ckpt"), weights_only=True)
    assert state["noise"]["noisy_fits"] >= 1
    assert 0.0 < float(rows[1]["gmm_noisy_fraction"]) < 1.0  # the fit's noisy side, before any gate


def test_ssrl_gmm_noisy_min_fraction_keeps_the_reclustering(minivox_ci, dino_ci, tmp_path):
    """gmm_noisy_min_fraction: the same run as above (there 0), but a noisy side smaller than 99 % of the utterances is no
    noisy mode: epoch 1's fit is gated, nothing counts, and epoch 2's listed re-clustering happens."""
    out = str(tmp_path / "ssrl_min_fraction")
    rows = _never_noisy_run(minivox_ci, dino_ci, out, min_fraction=0.99)
    assert rows[1]["gmm_gated"] == "1" and float(rows[1]["mean_p"]) == 1.0
    assert 0.0 < float(rows[1]["gmm_noisy_fraction"]) < 0.99
    assert rows[2]["reclustered"] == "1" and rows[2].get("recluster_skipped", "") in ("", "0")
    assert os.path.isdir(os.path.join(out, "reclustering"))


@pytest.mark.parametrize("prune", [True, False])
def test_ssrl_recluster_merge_connectivity_lets_the_count_fall(minivox_ci, dino_ci, tmp_path, prune):
    """recluster_merge_connectivity: each re-clustering merges the clusters its k-NN graph joins at least that
    strongly: history shows the merges and the lower count, the saved files name the threshold; with pruning the ids
    left over are pruned at once and the next re-clustering asks for the active count only, without (the MiniVox
    default) they stay and every re-clustering asks for K0 again; a bad value is refused."""
    out = str(tmp_path / "ssrl_merge")
    args = [f"--data_folder={minivox_ci}", f"--dino_folder={dino_ci}", f"--output_folder={out}", "--K0=24",
            "--fixed_label_epochs=1", "--lr_fix_start=0.01", "--lr_start=0.01", "--ema_start=0.5", "--ema_end=0.9",
            "--recluster_epochs=[2,3]", "--recluster_every=0", "--recluster_if=always", "--validate_every=0",
            f"--prune_clusters={prune}", *TINY_ECAPA, "--cluster_method=spectral", "--spectral_neighbors=5",
            "--recluster_merge_connectivity=0.3"]
    run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", *args, "--number_of_epochs=4")
    rows = history(out)
    first = torch.load(os.path.join(out, "reclustering", "epoch_2", "initial_clustering.pt"), weights_only=False)
    second = torch.load(os.path.join(out, "reclustering", "epoch_3", "initial_clustering.pt"), weights_only=False)
    assert first["config"]["merge_connectivity"] == 0.3 and first["merged"] == int(rows[2]["recluster_merged"]) > 0
    left = int(torch.unique(first["labels"]).numel())
    assert int(rows[2]["n_clusters"]) == left and 2 <= left < 24
    if prune:
        assert int(rows[2]["n_pruned"]) == 24 - left
        assert second["k"] == left  # the next re-clustering asks for the active clusters only
        assert int(rows[3]["n_clusters"]) <= left and int(rows[3]["n_pruned"]) == 24 - int(rows[3]["n_clusters"])
    else:
        assert first["k"] == second["k"] == 24 and int(rows[3]["n_pruned"]) == 0  # the merged ids stay
        assert int(rows[3]["n_clusters"]) == 24 - second["merged"]
        bad = [a.replace(out, out + "_bad") for a in args[:-1]] + ["--recluster_merge_connectivity=2"]
        proc = run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", *bad, "--number_of_epochs=4", check=False)
        assert proc.returncode != 0 and "recluster_merge_connectivity: 2 is not a number in (0, 1]" in proc.stdout + proc.stderr
