"""tools/demo.py's table: SSRL's label columns from its history, and step times kept across invocations."""

from __future__ import annotations

import csv
import importlib.util
import json
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo_tool", os.path.join(REPO, "tools", "demo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _scores(path, rng, shift):
    """One trial list for every system: 6 speakers (id00001..), target trials score higher by ``shift``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for a in range(6):
            for b in range(6):
                for u in range(3):
                    label = int(a == b)
                    f.write(f"id{a:05d}/x/{u}.wav id{b:05d}/y/{u}.wav {label} {rng.normal() + shift * label:.4f}\n")


def test_table_reads_the_ssrl_history_and_keeps_earlier_step_times(demo, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "build_info.json").write_text(json.dumps({"complete": True, "stats": {"train_speakers": 116}}))
    rng = np.random.default_rng(0)
    for i, name in enumerate(("mfcc", "random_init", "dino", "ssrl")):
        _scores(str(out / name / "scores_veri_test2.txt"), rng, 1.0 + i)
    rows = [{"epoch": 1, "nmi": 0.61, "purity": 0.33, "n_clusters": 200, "max_speakers_per_home": 3},
            {"epoch": 2, "nmi": 0.65, "purity": 0.41, "n_clusters": 190, "max_speakers_per_home": ""},
            {"epoch": 3, "nmi": 0.66, "purity": 0.44, "n_clusters": 180, "max_speakers_per_home": 2}]
    with open(out / "ssrl" / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    # an earlier invocation (before timings.json existed) left its step times in results.json
    (out / "results.json").write_text(json.dumps({"timings_seconds": {"minivox_build": 120.0, "train_dino": 600.0}}))
    timings = demo.load_timings(str(out))
    assert timings == {"minivox_build": 120.0, "train_dino": 600.0}
    timings["train_ssrl"] = 900.0
    demo.save_timings(str(out), timings)
    assert demo.load_timings(str(out)) == timings  # timings.json now wins over results.json

    res = {n: {"eer": 30.0 - i, "eer_se": 1.5, "min_dcf_0.01": 0.99, "min_dcf_0.05": 0.98}
           for i, n in enumerate(("mfcc", "random_init", "dino", "ssrl"))}
    table = demo.write_results(str(out), str(data), res, timings, "cpu", "fp32", 30.0)
    ssrl = next(line for line in table.splitlines() if line.startswith("| SSRL"))
    assert ssrl == "| SSRL teacher (stage 2) | 27.00 ± 1.50 | 0.990 | 0.980 | 0.610 → 0.660 | 0.330 → 0.440 | 200 → 180 | 2 | 15.0 |"
    assert "| ECAPA, random init (BN re-estimated) | 29.00 ± 1.50 |" in table and "(not timed) |" in table
    assert "demo steps 27.0 min in all" in table and "this invocation 0.5 min" in table
    assert "- ssrl - mfcc: " in table and "true training speakers: 116" in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["timings_seconds"] == timings and set(saved["paired_differences"]) == {
        "ssrl - dino", "ssrl - mfcc", "dino - mfcc", "dino - random_init"}
    assert (out / "results.md").read_text().strip() == table


def test_a_step_folder_made_by_other_settings_is_refused(demo, tmp_path):
    fix = "remove it"
    stamp = demo.step_stamp(["hparams/minivox/dino_ecapa.yaml", "--data_folder=/d", "--validate_every=5"])
    assert len(stamp["yaml_sha256"]) == 64
    folder = tmp_path / "dino"
    demo.claim_step_folder(str(folder), stamp, fix)  # a new folder records what makes it
    assert json.loads((folder / demo.STEP_STAMP).read_text()) == stamp
    demo.claim_step_folder(str(folder), stamp, fix)  # the same settings: resumed or reused
    other = dict(stamp, train_args=stamp["train_args"] + ["--number_of_epochs=6"])
    with pytest.raises(SystemExit, match=r"dino was made by other demo settings \(arguments --number_of_epochs=6\): remove it"):
        demo.claim_step_folder(str(folder), other, fix)
    edited = dict(stamp, yaml_sha256="0" * 64)  # a pulled change to the yaml
    with pytest.raises(SystemExit, match=r"hparams/minivox/dino_ecapa.yaml changed since\): remove it"):
        demo.claim_step_folder(str(folder), edited, fix)
    old = tmp_path / "old_dino"  # a demo from before demo_step.json: not reused
    (old / "pretrained").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"old_dino is an older demo's output without demo_step.json"):
        demo.claim_step_folder(str(old), stamp, fix)
