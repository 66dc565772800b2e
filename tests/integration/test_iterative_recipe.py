"""The iterative baseline recipe (hparams/minivox/iterative_ecapa.yaml) on a CI-size MiniVox:
rounds, per-round history, fresh models from the DINO initialisation, resume at round granularity."""

import os

import torch

from recipe_utils import TINY_ECAPA, history, run_recipe


def test_iterative_rounds_history_and_resume(minivox_ci, dino_ci, tmp_path):
    out = str(tmp_path / "iterative")
    args = [f"--data_folder={minivox_ci}", f"--dino_folder={dino_ci}", f"--output_folder={out}", "--K0=24",
            "--epochs_per_round=2", *TINY_ECAPA]
    run_recipe("train.py", "hparams/minivox/iterative_ecapa.yaml", *args, "--rounds=2")
    rows = history(out)
    assert [r["round"] for r in rows] == ["1", "2"]
    for key in ("eer", "eer_se", "nmi", "purity", "accuracy", "n_clusters", "steps", "total_steps",
                "train_seconds", "cluster_seconds", "wall_seconds", "total_wall_seconds"):
        assert all(r[key] != "" for r in rows), key
    assert int(rows[0]["steps"]) == 2 * (48 // 8) and int(rows[1]["total_steps"]) == 2 * int(rows[0]["steps"])
    for r in (1, 2):
        rdir = os.path.join(out, f"round_{r}")
        for f in ("initial_clustering.pt", "history.csv", "pretrained/embedding_model.ckpt", "round_done.json"):
            assert os.path.exists(os.path.join(rdir, f)), (r, f)
        ep = history(rdir)
        assert [e["epoch"] for e in ep] == ["0", "1", "2"]
        assert ep[0]["eer"] == "" and ep[-1]["eer"] != ""  # only the round's last epoch is validated
        assert len({e["nmi"] for e in ep}) == 1 and len({e["n_clusters"] for e in ep}) == 1  # labels fixed in a round
    # round 2 clustered round 1's model: other labels than round 1's (which clustered DINO's)
    y1 = torch.load(os.path.join(out, "round_1", "initial_clustering.pt"), weights_only=True)["labels"]
    y2 = torch.load(os.path.join(out, "round_2", "initial_clustering.pt"), weights_only=True)["labels"]
    assert not torch.equal(y1, y2)
    assert os.path.exists(os.path.join(out, "pretrained", "embedding_model.ckpt"))

    # resume: round 2 lost its completion mark (killed after training), and one more round is asked
    os.remove(os.path.join(out, "round_2", "round_done.json"))
    proc = run_recipe("train.py", "hparams/minivox/iterative_ecapa.yaml", *args, "--rounds=3")
    log = proc.stdout + proc.stderr
    assert "round 1/3 already done" in log
    assert log.count("Going into epoch 1") == 1  # round 2 is not retrained, round 3 trains from epoch 1
    assert "reusing" in log and "round_2/initial_clustering.pt" in log
    rows2 = history(out)
    assert [r["round"] for r in rows2] == ["1", "2", "3"]
    assert rows2[1]["eer"] == rows[1]["eer"] and rows2[1]["steps"] == rows[1]["steps"]
    assert int(rows2[2]["total_steps"]) == 3 * int(rows[0]["steps"])
