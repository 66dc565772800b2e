"""Shared pytest fixtures: a CI-size MiniVox corpus, built once per test session, and its CSVs.

* ``minivox_ci``  -> str: root of a MiniVox built with ``size="ci", seed=0`` (11 speakers x 8
  utterances, a trial list with target and non-target trials, noise/ and rir/ with their CSVs).
  Skipped, with the reason, when espeak-ng or sox is not installed.
* ``prepared_ci`` -> str: save folder of ``prepare_voxceleb`` run on it (``train.csv``, ``test.csv``,
  ``veri_test2.txt``).
* ``bench_script`` -> ``load(name)``: the module of ``bench/<name>.py`` (the bench scripts are not a package).

Treat both folders as read-only: copy what a test modifies.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import pytest
import torch

torch.set_num_threads(1)  # 2-core CI machines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def bench_script():
    """``load(name)`` imports ``bench/<name>.py`` by its path and registers it in ``sys.modules`` under ``name`` (a
    script whose child processes unpickle its functions needs that)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "bench", f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture(scope="session")
def minivox_ci(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A CI-size MiniVox (seed 0), built once per test session (a few seconds)."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"MiniVox needs {' and '.join(missing)}: run tools/install_system_deps.sh "
            "(apt-get install espeak-ng sox flite mbrola ...)"
        )
    from speechbrain_ssrl.data.minivox import build

    root = tmp_path_factory.mktemp("minivox") / "minivox_ci"
    return str(build(str(root), size="ci", seed=0, jobs=2, progress=False))


@pytest.fixture(scope="session")
def prepared_ci(minivox_ci: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``prepare_voxceleb`` CSVs (train.csv, test.csv, trial-list copy) of the CI MiniVox."""
    from speechbrain_ssrl.data.voxceleb import prepare_voxceleb

    save = str(tmp_path_factory.mktemp("prepared_ci"))
    prepare_voxceleb(minivox_ci, save, os.path.join(minivox_ci, "veri_test2.txt"))
    return save
