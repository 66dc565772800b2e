"""Fixtures shared by the recipe tests (the MiniVox corpus itself is built in ``tests/conftest.py``)."""

import pytest

from recipe_utils import TINY_DINO, run_recipe


@pytest.fixture(scope="session")
def dino_ci(minivox_ci, tmp_path_factory) -> str:
    """A finished 1-epoch tiny DINO run on the CI MiniVox: the stage-1 folder of the SSRL, iterative and
    DDP tests (read only: no test writes into it)."""
    out = str(tmp_path_factory.mktemp("dino_ci"))
    run_recipe("train.py", "hparams/minivox/dino_ecapa.yaml", f"--data_folder={minivox_ci}", f"--output_folder={out}",
               "--number_of_epochs=1", *TINY_DINO)
    return out
