"""Stage 1 (DINO) recipe on a CI-size MiniVox: outputs, finite loss, resume at the next epoch."""

import math
import os

from recipe_utils import TINY_DINO, history, run_recipe


def test_dino_two_epochs_then_resume(minivox_ci, tmp_path):
    out = str(tmp_path / "dino")
    run_recipe("train.py", "hparams/minivox/dino_ecapa.yaml", f"--data_folder={minivox_ci}", f"--output_folder={out}",
               "--number_of_epochs=2", *TINY_DINO)
    for f in ("train_log.txt", "log.txt", "env.log", "hyperparams.yaml", "history.csv", "plots/loss.png", "plots/eer.png",
              "pretrained/hyperparams.yaml", "pretrained/embedding_model.ckpt", "save/train.csv"):
        assert os.path.exists(os.path.join(out, f)), f
    rows = history(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert all(0.0 <= float(r["eer"]) <= 100.0 for r in rows)
    # the teacher's entropy stays away from collapse (a one-hot target has entropy 0)
    assert float(rows[-1]["teacher_entropy"]) > 0.05
    # resume: same command with one more epoch continues at epoch 3, not from scratch
    proc = run_recipe("train.py", "hparams/minivox/dino_ecapa.yaml", f"--data_folder={minivox_ci}", f"--output_folder={out}",
                      "--number_of_epochs=3", *TINY_DINO)
    assert "Going into epoch 1" not in proc.stdout + proc.stderr
    rows = history(out)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert int(rows[2]["steps"]) == 3 * int(rows[0]["steps"])
