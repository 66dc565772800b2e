"""Helpers to run the recipe scripts as a user would (a subprocess per command)."""

import csv
import os
import subprocess
import sys

import pytest
import torch

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


def assert_same(a, b, path="", rtol=0.0, atol=0.0):
    """Two checkpoint states (nested dicts of tensors, numbers, ...) are equal; exact unless rtol / atol are given."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}", rtol, atol)
    elif isinstance(a, torch.Tensor):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=path)
        else:
            assert torch.equal(a, b), path
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=max(rtol, 1e-12), abs=atol), path
    else:
        assert a == b, path
