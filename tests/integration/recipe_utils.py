"""Helpers to run the recipe scripts as a user would (a subprocess per command)."""

import csv
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(REPO, "recipes", "VoxCeleb", "SSRL")

# a toy ECAPA so that a CPU epoch on the CI corpus takes about a second
TINY_ECAPA = [
    "--channels=[32,32,32,32,96]",
    "--emb_dim=16",
    "--attention_channels=16",
    "--batch_size=8",
    "--bn_recal_batches=2",
    "--bn_recal_batch_size=4",
]
TINY_DINO = TINY_ECAPA + ["--n_prototypes=64", "--head_hidden=32", "--head_bottleneck=16"]


def run_recipe(script, yaml, *args, timeout=600, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, script, yaml, *args, "--noprogressbar"]
    proc = subprocess.run(cmd, cwd=RECIPE, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def history(folder):
    with open(os.path.join(folder, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))
