"""Runs every row of ``tests/recipes/SSRL.csv`` (SpeechBrain's ``tests/recipes/*.csv`` format) on the CI MiniVox.

Each row names a script, a yaml, its data-preparation file and README, the tiny debug overrides
(``test_debug_flags``) and the files a run must leave (``test_debug_checks: file_exists=[...]``). Placeholders
in the flags and paths: ``{data}`` the CI MiniVox root, ``{out}`` the row's output folder, ``{dino}`` the
output folder of the DINO row of the same dataset (run first), ``{speechbrain}`` a SpeechBrain source tree
(``SPEECHBRAIN_SOURCE``; rows that need it are skipped without one).
"""

import csv
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TABLE = os.path.join(REPO, "tests", "recipes", "SSRL.csv")
COLUMNS = ["Task", "Dataset", "Script_file", "Hparam_file", "Data_prep_file", "Readme_file", "Result_url", "HF_repo",
           "test_debug_flags", "test_debug_checks", "performance"]
SB_SOURCE = os.environ.get("SPEECHBRAIN_SOURCE", "")


def _rows():
    with open(TABLE, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _fill(text, places):
    for k, v in places.items():
        text = text.replace("{" + k + "}", v)
    return text


def _expected(checks):
    assert checks.startswith("file_exists=[") and checks.endswith("]"), checks
    return [p for p in checks[len("file_exists=["):-1].split(",") if p]


def _run(row, places, out):
    script = _fill(row["Script_file"], places)
    script = script if os.path.isabs(script) else os.path.join(REPO, script)
    yaml = os.path.join(REPO, row["Hparam_file"])
    flags = shlex.split(_fill(row["test_debug_flags"], dict(places, out=out)))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, os.path.basename(script), yaml, *flags, "--noprogressbar"]
    proc = subprocess.run(cmd, cwd=os.path.dirname(script), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    missing = [p for p in _expected(row["test_debug_checks"]) if not os.path.exists(os.path.join(out, p))]
    assert not missing, f"{row['Hparam_file']}: missing outputs {missing} in {out}"


@pytest.fixture(scope="module")
def dino_runs(minivox_ci, dino_ci, tmp_path_factory):
    """The DINO row of each dataset, run once (the other rows start from it). The MiniVox row's command is
    the one the session's ``dino_ci`` fixture runs (checked here), so that run is reused."""
    from recipe_utils import TINY_DINO

    out = {}
    for row in _rows():
        if os.path.basename(row["Hparam_file"]) != "dino_ecapa.yaml":
            continue
        flags = shlex.split(row["test_debug_flags"])
        if row["Dataset"] == "MiniVox" and sorted(flags) == sorted(
                ["--data_folder={data}", "--output_folder={out}", "--number_of_epochs=1", *TINY_DINO]):
            out[row["Dataset"]] = dino_ci
            continue
        folder = str(tmp_path_factory.mktemp(f"dino_{row['Dataset']}"))
        _run(row, {"data": minivox_ci}, folder)
        out[row["Dataset"]] = folder
    return out


def test_table_format_and_files():
    rows = _rows()
    with open(TABLE, newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == COLUMNS
    yamls = sorted(os.path.relpath(os.path.join(dp, n), REPO)
                   for dp, _, ns in os.walk(os.path.join(REPO, "recipes", "VoxCeleb", "SSRL", "hparams")) for n in ns
                   if n.endswith(".yaml"))
    assert sorted(r["Hparam_file"] for r in rows) == yamls  # one row per yaml, every yaml has one
    for r in rows:
        for key in ("Script_file", "Data_prep_file", "Readme_file"):
            if "{speechbrain}" not in r[key]:
                assert os.path.isfile(os.path.join(REPO, r[key])), (key, r[key])
        _expected(r["test_debug_checks"])


# The MiniVox SSRL / iterative yamls already run in CI with these overrides (test_ssrl_recipe.py,
# test_iterative_recipe.py): their rows run with the slow tests only, to keep the CI suite under 15 minutes.
_IN_CI_ELSEWHERE = {"recipes/VoxCeleb/SSRL/hparams/minivox/ssrl_ecapa.yaml",
                    "recipes/VoxCeleb/SSRL/hparams/minivox/iterative_ecapa.yaml"}


def _params():
    return [pytest.param(i, id=os.path.relpath(r["Hparam_file"], "recipes/VoxCeleb/SSRL/hparams"),
                         marks=[pytest.mark.slow] if r["Hparam_file"] in _IN_CI_ELSEWHERE else [])
            for i, r in enumerate(_rows())]


@pytest.mark.parametrize("index", _params())
def test_recipe_row(index, minivox_ci, dino_runs, tmp_path):
    row = _rows()[index]
    if "{speechbrain}" in row["Script_file"] and not (SB_SOURCE and os.path.isdir(os.path.join(SB_SOURCE, "recipes", "VoxCeleb"))):
        pytest.skip("set SPEECHBRAIN_SOURCE to a SpeechBrain source tree to run SpeechBrain's script")
    if os.path.basename(row["Hparam_file"]) == "dino_ecapa.yaml":
        out = dino_runs[row["Dataset"]]  # already run by the fixture; its outputs are checked here
        missing = [p for p in _expected(row["test_debug_checks"]) if not os.path.exists(os.path.join(out, p))]
        assert not missing, missing
        return
    dino = dino_runs.get(row["Dataset"]) or dino_runs["MiniVox"]
    _run(row, {"data": minivox_ci, "dino": dino, "speechbrain": SB_SOURCE}, str(tmp_path / "out"))
