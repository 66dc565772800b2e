"""The label-correction bench's diagnostic start: true labels, a known fraction randomised."""

import pytest
import torch

from speechbrain_ssrl.initial_clustering import load_initial_clustering
from speechbrain_ssrl.oracle_start import oracle_labels, save_oracle_start, session_of


def test_oracle_labels_speaker_and_session_split():
    spk = ["a"] * 6 + ["b"] * 6
    ses = ["s1", "s1", "s2", "s2", "s3", "s3"] * 2
    lab, k, info = oracle_labels(spk, ses, 0.0, "speaker")
    assert k == 2 and lab.tolist() == [0] * 6 + [1] * 6 and info["n_changed"] == 0
    lab, k, _ = oracle_labels(spk, ses, 0.0, "session")
    assert k == 6 and lab.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_oracle_noise_fraction_and_reproducibility():
    spk = [str(i % 50) for i in range(5000)]
    lab, k, info = oracle_labels(spk, ["s"] * 5000, 0.3, "speaker", seed=3)
    clean, _, _ = oracle_labels(spk, ["s"] * 5000, 0.0, "speaker")
    assert abs(info["n_randomised"] / 5000 - 0.3) < 0.03
    assert info["n_changed"] == int((lab != clean).sum()) and info["n_changed"] < info["n_randomised"]
    assert torch.equal(lab, oracle_labels(spk, ["s"] * 5000, 0.3, "speaker", seed=3)[0])
    with pytest.raises(ValueError, match="noise"):
        oracle_labels(spk, ["s"] * 5000, 1.5)


def test_saved_start_loads_like_a_kmeans_result(tmp_path):
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9]])
    lab = torch.tensor([0, 0, 1, 1])
    path = str(tmp_path / "initial_clustering.pt")
    save_oracle_start(path, ["u1", "u2", "u3", "u4"], lab, emb, 3, {"noise": 0.0})
    d = load_initial_clustering(path, expected_ids=["u1", "u2", "u3", "u4"], expected_k=3)
    assert torch.equal(d["labels"], lab) and d["centroids"].shape == (3, 2)
    assert torch.allclose(d["centroids"].norm(dim=1), torch.ones(3))
    assert d["centroids"][0, 0] > 0.9 and d["centroids"][1, 1] > 0.9


def test_session_of():
    assert session_of("/data/wav/id1/abcDEF/00001.wav") == "abcDEF"
