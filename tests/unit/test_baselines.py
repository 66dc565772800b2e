"""MFCC mean+std cosine baseline: runs on the CI MiniVox and does better than chance."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from speechbrain_ssrl.baselines import MfccMeanStd, main, mfcc_baseline, normalise

torch.set_num_threads(1)


def test_embedding_shape_and_normalisation():
    emb = MfccMeanStd(n_mfcc=20)(torch.randn(16000) * 0.1)
    assert emb.shape == (40,) and torch.isfinite(emb).all()
    x = torch.randn(10, 4) * torch.tensor([1.0, 10.0, 100.0, 0.0]) + 5
    m = normalise(x, "mean")
    assert torch.allclose(m.mean(0), torch.zeros(4), atol=1e-5)
    mv = normalise(x, "meanvar")
    assert torch.allclose(mv[:, :3].std(0), torch.ones(3), atol=1e-4) and torch.isfinite(mv).all()
    with pytest.raises(ValueError):
        normalise(x, "bogus")


def test_baseline_on_minivox_ci(minivox_ci):
    res = mfcc_baseline(minivox_ci, progress=False)
    assert 0.0 <= res["eer"] < 50.0
    assert math.isfinite(res["eer_se"]) and res["eer_se"] >= 0
    assert 0.0 <= res["min_dcf_0.01"] <= 1.0 + 1e-9 and 0.0 <= res["min_dcf_0.05"] <= 1.0 + 1e-9
    assert res["n_trials"] > res["n_target_trials"] > 0
    again = mfcc_baseline(minivox_ci, os.path.join(minivox_ci, "veri_test2.txt"), progress=False)
    assert again["eer"] == res["eer"]  # deterministic
    assert mfcc_baseline(minivox_ci, norm="mean", progress=False)["eer"] < 50.0


def test_cli_writes_json(minivox_ci, tmp_path, capsys):
    out = tmp_path / "res" / "results.json"
    main(["--data_folder", minivox_ci, "--out", str(out)])
    data = json.loads(out.read_text())
    assert set(data) == {"veri_test2.txt"}
    assert {"eer", "eer_se", "min_dcf_0.01", "min_dcf_0.05", "n_trials"} <= set(data["veri_test2.txt"])
    assert "EER" in capsys.readouterr().out


def test_missing_trial_files_are_reported(tmp_path):
    (tmp_path / "wav").mkdir()
    trials = tmp_path / "veri_test2.txt"
    trials.write_text("1 id1/a/00001.wav id1/b/00001.wav\n")
    with pytest.raises(FileNotFoundError, match="id1/a/00001.wav"):
        mfcc_baseline(str(tmp_path), progress=False)
