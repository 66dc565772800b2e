"""Validation during training is read-only: a run that validates trains the same model as one that does not.

``make demo`` leans on this (tools/demo.py does not validate during training; the evaluation step scores every
exported model instead): validation embeds a copy of the teacher with crops seeded apart from training's, so it must
leave the weights, the label state and every random stream of the training as they were.
"""

import os

import torch

from recipe_utils import TINY_DINO, TINY_ECAPA, assert_same, history, run_recipe


def _weights(folder):
    return torch.load(os.path.join(folder, "pretrained", "embedding_model.ckpt"), map_location="cpu", weights_only=True)


def test_dino_validation_does_not_change_the_model(minivox_ci, dino_ci, tmp_path):
    # dino_ci: the same 1-epoch tiny run, validated (dino_ecapa.yaml's validate_every: 1)
    assert history(dino_ci)[-1]["eer"] != ""
    out = str(tmp_path / "dino_novalid")
    run_recipe("train.py", "hparams/minivox/dino_ecapa.yaml", f"--data_folder={minivox_ci}", f"--output_folder={out}",
               "--number_of_epochs=1", "--validate_every=0", *TINY_DINO)
    assert history(out)[-1].get("eer", "") == ""
    assert_same(_weights(out), _weights(dino_ci))


def test_ssrl_validation_does_not_change_the_model_or_the_labels(minivox_ci, dino_ci, tmp_path):
    runs = {}
    for every in (1, 0):
        out = str(tmp_path / f"ssrl_v{every}")
        run_recipe("train.py", "hparams/minivox/ssrl_ecapa.yaml", f"--data_folder={minivox_ci}", f"--dino_folder={dino_ci}",
                   f"--output_folder={out}", "--K0=24", "--fixed_label_epochs=1", "--number_of_epochs=3",
                   f"--validate_every={every}", *TINY_ECAPA)
        runs[every] = out
    assert history(runs[1])[-1]["eer"] != "" and history(runs[0])[-1].get("eer", "") == ""
    assert_same(_weights(runs[1]), _weights(runs[0]))
    for key in ("nmi", "purity", "n_clusters", "labels_changed", "loss"):
        assert [r[key] for r in history(runs[1])] == [r[key] for r in history(runs[0])], key
