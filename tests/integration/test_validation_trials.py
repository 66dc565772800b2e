"""Validation during training: a user trial list of any paths (``valid_trial_paths: root``), or none at all
(said once in the log, no EER / valid_seconds columns): issue #15's runs on unlabelled data."""

import os

from recipe_utils import TINY_DINO, history, run_recipe


def test_root_relative_trial_list_validates_like_the_voxceleb_one(minivox_ci, dino_ci, tmp_path):
    trials = tmp_path / "my_trials.txt"
    with open(os.path.join(minivox_ci, "veri_test2.txt")) as f:  # the same trials, paths from the corpus root
        trials.write_text("".join(f"{lab} wav/{a} wav/{b}\n" for lab, a, b in (line.split() for line in f)))
    out = str(tmp_path / "dino")
    run_recipe("train.py", "hparams/minivox/dino_ecapa.yaml", f"--data_folder={minivox_ci}", f"--output_folder={out}",
               "--number_of_epochs=1", *TINY_DINO, f"--valid_trials={trials}", "--valid_trial_paths=root")
    mine, ref = history(out), history(dino_ci)  # dino_ci: the same run with the default list
    assert mine[-1]["eer"] != "" and float(mine[-1]["eer"]) == float(ref[-1]["eer"])


def test_no_trial_list_no_validation_said_once(minivox_ci, tmp_path):
    out = str(tmp_path / "dino")
    proc = run_recipe("train.py", "hparams/minivox/dino_ecapa.yaml", f"--data_folder={minivox_ci}",
                      f"--output_folder={out}", "--number_of_epochs=2", *TINY_DINO,
                      f"--valid_trials={tmp_path / 'none.txt'}")
    rows = history(out)
    assert len(rows) >= 2 and all(not r.get("eer") and not r.get("valid_seconds") for r in rows)
    assert (proc.stdout + proc.stderr).count("no validation: valid_trials") == 1
