"""run_experiments.py end to end on a CI-size MiniVox with a toy model and tiny budgets.

The session's tiny DINO run (``--dino_folder``; run_experiments trains DINO with the same ``train()`` as every
other system) → iterative baseline (2 rounds x 1 epoch) → SSRL and its three ablations (2 epochs each: the same
number of steps) → test evaluation → results.md / results.json / plots → README section; then the same command
again, which must train and evaluate nothing.
"""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from recipe_utils import RECIPE, TINY_DINO

# the pruning ablation is ssrl_prune: the MiniVox yaml does not prune (a row that repeats the yaml is not run)
SYSTEMS = {"dino", "iterative_r1", "iterative_r2", "ssrl", "ssrl_no_noisy", "ssrl_no_queue", "ssrl_prune"}


def run_experiments(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "run_experiments.py", *args]
    proc = subprocess.run(cmd, cwd=RECIPE, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


def test_experiments_end_to_end_then_resume_does_nothing(minivox_ci, dino_ci, tmp_path):
    out = tmp_path / "exp"
    readme = tmp_path / "README.md"
    readme.write_text("# r\n<!-- minivox-results:start -->\nSTALE-SECTION\n<!-- minivox-results:end -->\ntail\n")
    args = [f"--data_folder={minivox_ci}", f"--out={out}", "--rounds=2", "--epochs_per_round=1", f"--dino_folder={dino_ci}",
            "--threads=1", "--device=cpu", "--update_readme", f"--readme_file={readme}",
            # toy ECAPA; K0 = 4x the 6 training speakers; one fixed-label epoch so SSRL updates its labels once
            *TINY_DINO, "--K0=24", "--fixed_label_epochs=1"]
    log = run_experiments(*args)
    first_cmd = re.search(r"^\$ .*train\.py", log, re.M)
    assert "Plan (minivox config" in log and first_cmd and log.index("Plan (") < first_cmd.start()

    res = json.loads((out / "results.json").read_text())
    assert set(res["systems"]) == SYSTEMS and res["order"][0] == "dino"
    for name, s in res["systems"].items():
        t = s["test"]
        assert 0 <= t["eer"] <= 100 and math.isfinite(t["eer_se"]), name
        assert 0 <= t["min_dcf_0.01"] <= 1.0 + 1e-9 and 0 <= t["min_dcf_0.05"] <= 1.0 + 1e-9, name
        assert s["cost"]["steps"] > 0 and s["cost"]["wall_seconds"] >= 0, name
    sy = res["systems"]
    # equal step budget: one SSRL run = the whole 2-round baseline; round 1 = half of it
    spe = 48 // 8  # 48 training utterances, batch 8, drop_last
    assert sy["iterative_r2"]["cost"]["steps"] == 2 * spe and sy["iterative_r1"]["cost"]["steps"] == spe
    assert all(sy[n]["cost"]["steps"] == 2 * spe for n in ("ssrl", "ssrl_no_noisy", "ssrl_no_queue", "ssrl_prune"))
    # label diagnostics of the final labels
    for n in SYSTEMS - {"dino"}:
        lab = sy[n]["labels"]
        assert 0 <= lab["nmi"] <= 1 and 0 < lab["purity"] <= 1 and 1 <= lab["n_clusters"] <= 24, n
    # every final model's embeddings re-clustered with K0 = 24 (the DINO row: the SSRL / round-1 start)
    for n in SYSTEMS:
        rc = sy[n]["reclustered"]
        assert 0 <= rc["nmi"] <= 1 and 0 < rc["purity"] <= 1 and rc["n_clusters"] <= 24 and rc["n_items"] == 48, n
    # the ablation switches reached the runs
    last = {n: sy[n]["history"][-1] for n in ("ssrl", "ssrl_no_noisy")}
    assert float(last["ssrl_no_noisy"]["mean_p"]) == 1.0
    assert int(last["ssrl"]["n_pruned"]) == 0
    assert "--prune_clusters=True" in json.loads((out / "logs" / "ssrl_prune.done.json").read_text())["cmd"]
    assert "--queue_length=1" in json.loads((out / "logs" / "ssrl_no_queue.done.json").read_text())["cmd"]
    # SSRL and every round-1 start from the same k-means labels (computed once)
    assert sy["ssrl"]["history"][0]["nmi"] == sy["ssrl_no_queue"]["history"][0]["nmi"]
    assert math.isclose(float(sy["ssrl"]["history"][0]["nmi"]), res["iterative_rounds"][0]["nmi"], rel_tol=1e-4)
    # the baseline's per-round history
    rounds = res["iterative_rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for key in ("eer", "nmi", "purity", "accuracy", "n_clusters", "steps", "total_steps", "wall_seconds", "train_seconds"):
        assert all(r.get(key) is not None for r in rounds), key
    # paired differences against SSRL for every other system
    assert set(res["paired_vs_ssrl"]) == SYSTEMS - {"ssrl"}
    assert all(isinstance(d["holds"], bool) and d["se"] >= 0 for d in res["paired_vs_ssrl"].values())

    md = (out / "results.md").read_text()
    for s in sy.values():
        assert s["label"] in md
    assert res["git"]["commit"] in md and "run_experiments.py" in md and "holds" in md
    for f in ("cluster_count.png", "nmi.png", "eer_vs_cost.png"):
        assert (out / "plots" / f).stat().st_size > 1000, f
    # README section replaced, plots copied next to it
    text = readme.read_text()
    assert "STALE-SECTION" not in text and text.startswith("# r\n") and text.endswith("tail\n")
    assert "minivox_results/plots/eer_vs_cost.png" in text and (tmp_path / "minivox_results" / "plots" / "nmi.png").exists()

    # resume: the same command trains nothing and evaluates nothing
    mtimes = {n: os.path.getmtime(out / n / "history.csv") for n in ("iterative", "ssrl", "ssrl_no_queue", "ssrl_prune")}
    log2 = run_experiments(*args)
    assert not re.search(r"^\$ ", log2, re.M) and "evaluating" not in log2 and "re-clustering" not in log2
    assert log2.count("complete, skipped") == 5  # the baseline and the four SSRL runs
    assert mtimes == {n: os.path.getmtime(out / n / "history.csv") for n in mtimes}
    res2 = json.loads((out / "results.json").read_text())
    assert res2["paired_vs_ssrl"] == res["paired_vs_ssrl"]


# 70 s on the 2-core CI machine: with the slow tests (the oracle start is unit-tested in test_oracle_start.py and
# run_experiments end to end by the test above), to keep the CI suite under 15 minutes
@pytest.mark.slow
def test_label_correction_bench_variants_and_supervised_ceiling(minivox_ci, dino_ci, tmp_path):
    """--start oracle (true labels, 50 % randomised) for an SSRL row and a --variant row, plus the supervised
    ceiling (true labels, fixed); the baseline is left out with --systems. The variant's confidence gate applies to the
    nearest-prototype rule (the MiniVox default's neighbourhood vote refuses it), so it names that rule."""
    out = tmp_path / "bench"
    args = [f"--data_folder={minivox_ci}", f"--out={out}", f"--dino_folder={dino_ci}", "--rounds=2", "--epochs_per_round=1",
            "--threads=1", "--device=cpu", "--recluster=off", "--validate_every=2", *TINY_DINO, "--fixed_label_epochs=1",
            "--start=oracle", "--oracle_noise=0.5", "--systems=ssrl,gated,supervised",
            "--variant=gated=--relabel_assignment=nearest --relabel_min_margin=0.05 --relabel_prototypes=mean"]
    run_experiments(*args)
    res = json.loads((out / "results.json").read_text())
    sy = res["systems"]
    assert set(sy) == {"dino", "ssrl", "gated", "supervised"} and res["iterative_rounds"] == []
    assert "DIAGNOSTIC start" in res["start"] and "50%" in res["start"]
    md = (out / "results.md").read_text()
    assert "DIAGNOSTIC start" in md and "Supervised ceiling" in md
    # the bench's start: 6 true speakers -> K0 = 6, half the labels randomised (NMI well below 1)
    for n in ("ssrl", "gated"):
        assert sy[n]["labels_start"]["n_clusters"] <= 6 and sy[n]["labels_start"]["nmi"] < 0.9, n
    assert "--relabel_min_margin=0.05" in json.loads((out / "logs" / "gated.done.json").read_text())["cmd"]
    # the ceiling trains on the true labels, unchanged
    assert sy["supervised"]["labels"]["nmi"] == 1.0 and sy["supervised"]["labels"]["n_clusters"] == 6
    assert res["reference"] == "ssrl" and set(res["paired_vs_ssrl"]) == {"dino", "gated", "supervised"}


def test_finished_run_stamps_match_in_another_clone():
    """A finished run's stamp names the recipe's yaml relative to the recipe folder, so the same command from
    another clone or worktree of the repository reuses the run instead of training it again."""
    sys.path.insert(0, RECIPE)
    try:
        import run_experiments as rx
    finally:
        sys.path.remove(RECIPE)
    a = ["train.py", "/home/a/speechbrain-ssrl/recipes/VoxCeleb/SSRL/hparams/minivox/ssrl_ecapa.yaml", "--K0=200",
         "--output_folder=/data/out/ssrl"]
    b = ["train.py", "/tmp/wt/recipes/VoxCeleb/SSRL/hparams/minivox/ssrl_ecapa.yaml", "--K0=200", "--output_folder=/data/out/ssrl"]
    assert rx.portable(a) == rx.portable(b) == ["train.py", "hparams/minivox/ssrl_ecapa.yaml", "--K0=200",
                                                 "--output_folder=/data/out/ssrl"]
    assert rx.portable(a) != rx.portable(a[:2] + ["--K0=100"] + a[3:])  # any other change still counts


def test_reclustered_columns_use_the_starts_k():
    """The re-clustered columns use the bench's K0 whichever systems run (a variant-only bench used the yaml's)."""
    sys.path.insert(0, RECIPE)
    try:
        import run_experiments as rx
    finally:
        sys.path.remove(RECIPE)
    assert rx.recluster_k({}, "200") == 200  # k-means start: the yaml's K0
    assert rx.recluster_k({"gmm": ("start.pt", 116), "iterative": ("start.pt", 116)}, 200) == 116
    assert rx.recluster_k({"supervised": ("sup.pt", 116)}, 200) == 200


def test_systems_default_optional_rows_and_pinned_overrides():
    """The default rows are the baseline and the four SSRL rows (the pruning ablation the one that changes the yaml);
    ``ssrl_no_recluster`` runs only when named; the no-GMM row and the supervised ceiling pin ``recluster_if: always``
    (``never_noisy`` reads the GMM) and the ceiling never re-clusters its true labels."""
    sys.path.insert(0, RECIPE)
    try:
        import run_experiments as rx
    finally:
        sys.path.remove(RECIPE)
    base = ["--data_folder=/d", "--out=/o"]
    a = rx.parse_args(base)
    assert a.systems == ["iterative", "ssrl", "ssrl_no_noisy", "ssrl_no_queue", "ssrl_prune"]  # the yaml does not prune
    a = rx.parse_args(base + ["--systems=ssrl,ssrl_no_recluster,ssrl_no_noisy,supervised"])
    ov = {n: args for n, _, args in a.variants}
    assert set(ov) == {"ssrl", "ssrl_no_recluster", "ssrl_no_noisy", "supervised"}
    assert "--recluster_every=0" in ov["ssrl_no_recluster"] and "--recluster_epochs=[]" in ov["ssrl_no_recluster"]
    assert "--recluster_if=always" in ov["ssrl_no_noisy"]
    assert {"--recluster_every=0", "--recluster_epochs=[]", "--recluster_if=always"} <= set(ov["supervised"])
    with pytest.raises(SystemExit):
        rx.parse_args(base + ["--variant", "ssrl_no_recluster=--K0=3"])  # a taken name
    # --reference: the paired differences' row, one of the SSRL rows that run
    assert rx.parse_args(base + ["--systems=ssrl_no_queue,v", "--variant", "v=--K0=3", "--reference=v"]).reference == "v"
    assert rx.parse_args(base).reference is None  # ssrl when it runs, else the first SSRL row
    with pytest.raises(SystemExit):
        rx.parse_args(base + ["--systems=ssrl_no_queue", "--reference=ssrl"])


def test_rows_that_repeat_the_yaml_are_dropped_or_refused(capsys):
    """A default SSRL row whose overrides already hold in the ssrl yaml (with the run's own overrides) is not run, so
    the pruning ablation is ssrl_no_prune or ssrl_prune, whichever changes the yaml; a row named in --systems or
    given by --variant that changes nothing is refused with one line naming the key and the yaml."""
    sys.path.insert(0, RECIPE)
    try:
        import run_experiments as rx
    finally:
        sys.path.remove(RECIPE)
    base = ["--data_folder=/d", "--out=/o"]
    minivox = rx.yaml_value(rx.stage_yaml("minivox", "ssrl"), "prune_clusters")
    prunes = rx.same_yaml_value(minivox, "True")
    assert rx.parse_args(base).systems[-1] == ("ssrl_no_prune" if prunes else "ssrl_prune")
    flipped = rx.parse_args(base + [f"--prune_clusters={not prunes}"])
    assert flipped.systems[-1] == ("ssrl_prune" if prunes else "ssrl_no_prune")
    assert rx.parse_args(base + ["--config=full"]).systems[-1] == "ssrl_no_prune"  # the VoxCeleb yaml prunes
    assert rx.same_yaml_value("1", "1.0") and rx.same_yaml_value("true", "True") and rx.same_yaml_value("[ ]", "[]")
    assert not rx.same_yaml_value("0.25", "null") and not rx.same_yaml_value(None, "null")
    assert rx.repeated_rows([("a", "", ["--K0=5"]), ("b", "", ["--K0=200", "--seed=1"])], rx.stage_yaml("minivox", "ssrl"),
                            ["--K0=5", "--seed=1"]) == {"a": "K0: 5"}
    refused = [
        (["--config=full", "--systems=ssrl,ssrl_prune"], "--systems ssrl_prune: prune_clusters: True is already so in "
         "hparams/ssrl_ecapa.yaml"),
        (["--config=full", "--systems=ssrl_no_recluster"], "recluster_every: 0, recluster_epochs: [] is already so"),
        (["--variant", "same=--K0=200 --seed=1986"], "--variant same: K0: 200, seed: 1986 is already so in "
         "hparams/minivox/ssrl_ecapa.yaml"),
    ]
    for extra, message in refused:
        with pytest.raises(SystemExit):
            rx.parse_args(base + extra)
        assert message in capsys.readouterr().err, extra


def test_plan_counts_each_variants_reclusterings():
    """The plan's SSRL estimate adds one clustering pass per scheduled re-clustering of that variant (the MiniVox
    yaml: after epochs 3-9 of 10; none for ssrl_no_recluster; a listed epoch counts once)."""
    sys.path.insert(0, RECIPE)
    try:
        import run_experiments as rx
    finally:
        sys.path.remove(RECIPE)
    a = rx.parse_args(["--data_folder=/d", "--out=/o", "--systems=ssrl,ssrl_no_recluster,listed",
                       "--variant", "listed=--recluster_every=0 --recluster_epochs=[4,4,6]"])
    plan = rx.Plan(a, n_train=2320, n_test_utts=690)
    counts = {n: plan.reclusterings(list(plan.ov["ssrl"]) + list(args)) for n, _, args in a.variants}
    assert counts == {"ssrl": 7, "ssrl_no_recluster": 0, "listed": 2}
    minutes = {r["system"]: r["minutes"] for r in plan.rows()}
    labels = {n: label[:46] for n, label, _ in a.variants}
    pass_minutes = (2320 * rx.CPU_ESTIMATES["embed_utt"] + rx.CPU_ESTIMATES["bn_recal"]) / 60
    assert minutes[labels["ssrl"]] - minutes[labels["ssrl_no_recluster"]] == pytest.approx(7 * pass_minutes)
