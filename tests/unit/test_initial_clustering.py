"""Tests of speechbrain_ssrl.initial_clustering (embed → k-means → save / reuse / refuse)."""

import csv
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_ssrl.initial_clustering import initial_clustering, load_initial_clustering

torch.set_num_threads(1)
SR = 16000
FREQS = {"spkA": 220.0, "spkB": 770.0, "spkC": 1900.0}  # three "speakers": distinct tones


def _write_corpus(folder, n_per=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for spk, f0 in FREQS.items():
        for u in range(n_per):
            dur = 0.5 + 0.25 * u
            t = np.arange(int(dur * SR)) / SR
            sig = 0.3 * np.sin(2 * np.pi * f0 * (1 + 0.01 * u) * t) + 0.01 * rng.standard_normal(t.size)
            path = os.path.join(folder, f"{spk}_{u}.wav")
            sf.write(path, sig.astype("float32"), SR)
            rows.append(dict(ID=f"{spk}--v--{u}", duration=f"{dur:.3f}", wav=path, start="0", stop=str(t.size), spk_id=spk))
    return rows


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["ID", "duration", "wav", "start", "stop", "spk_id"])
        w.writeheader()
        w.writerows(rows)
    return str(path)


class FakeEmbed:
    """Mean log-spectrum of 400-sample frames (valid part only), through a fixed random projection."""

    def __init__(self, dim=12):
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(201, dim, generator=g)
        self.calls = 0

    def __call__(self, wavs, lens):
        self.calls += 1
        out = []
        for w, l in zip(wavs, lens):
            w = w[: int(round(float(l) * w.shape[0]))]
            frames = w[: w.shape[0] // 400 * 400].reshape(-1, 400)
            spec = torch.fft.rfft(frames, dim=1).abs().add(1e-3).log().mean(0)
            out.append(spec - spec.mean())
        return torch.stack(out) @ self.proj


@pytest.fixture()
def corpus(tmp_path):
    rows = _write_corpus(str(tmp_path))
    return rows, _write_csv(tmp_path / "train.csv", rows)


def test_saves_reuses_and_refuses(tmp_path, corpus):
    rows, csv_path = corpus
    out = tmp_path / "clust"
    emb = FakeEmbed()
    res = initial_clustering(emb, csv_path, str(out), 3, seed=0, progress=False, batch_seconds=3.0)
    path = out / "initial_clustering.pt"
    assert path.is_file()
    assert res["labels"].dtype == torch.int64 and res["labels"].shape == (12,)
    assert res["centroids"].shape == (3, 12)
    assert torch.allclose(res["centroids"].norm(dim=1), torch.ones(3), atol=1e-5)
    assert res["ids"] == [r["ID"] for r in rows]
    # the diagnostic report against spk_id: the tones are trivially separable
    assert res["report"]["nmi"] == pytest.approx(1.0) and res["report"]["n_clusters"] == 3
    calls = emb.calls
    assert calls >= 2  # batched (3 s of audio per batch)

    # reuse: no embedding call, same result
    again = initial_clustering(emb, csv_path, str(out), 3, seed=0, progress=False)
    assert emb.calls == calls
    assert torch.equal(again["labels"], res["labels"]) and torch.equal(again["centroids"], res["centroids"])

    # same utterances in another order: reused, labels follow the rows
    shuffled = rows[::-1]
    csv2 = _write_csv(tmp_path / "train_rev.csv", shuffled)
    rev = initial_clustering(emb, csv2, str(out), 3, progress=False)
    assert emb.calls == calls
    assert torch.equal(rev["labels"], res["labels"].flip(0))

    # refuses a different k or a different set of utterances, naming the fix
    with pytest.raises(ValueError, match="k = 3 clusters but k = 2.*delete"):
        initial_clustering(emb, csv_path, str(out), 2, progress=False)
    csv3 = _write_csv(tmp_path / "train_less.csv", rows[:-1])
    with pytest.raises(ValueError, match="another set of utterances.*delete"):
        initial_clustering(emb, csv3, str(out), 3, progress=False)
    with pytest.raises(ValueError, match="another set"):
        load_initial_clustering(str(path), expected_ids=[r["ID"] for r in rows[:-1]])
    data = load_initial_clustering(str(path), expected_ids=[r["ID"] for r in rows], expected_k=3)
    assert data["config"]["seed"] == 0 and data["k"] == 3 and data["n_iter"] >= 1


def test_spk_id_never_used_for_clustering(tmp_path, corpus):
    rows, csv_path = corpus
    a = initial_clustering(FakeEmbed(), csv_path, str(tmp_path / "a"), 3, progress=False)
    scrambled = [dict(r, spk_id=f"s{i % 2}") for i, r in enumerate(rows)]
    b = initial_clustering(FakeEmbed(), _write_csv(tmp_path / "s.csv", scrambled), str(tmp_path / "b"), 3, progress=False)
    assert torch.equal(a["labels"], b["labels"])
    no_spk = [{k: v for k, v in r.items() if k != "spk_id"} for r in rows]
    p = tmp_path / "n.csv"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["ID", "duration", "wav", "start", "stop"])
        w.writeheader()
        w.writerows(no_spk)
    c = initial_clustering(FakeEmbed(), str(p), str(tmp_path / "c"), 3, progress=False, max_seconds=0.6)
    assert c["report"] is None and c["labels"].shape == (12,)


def test_bad_input(tmp_path, corpus):
    rows, csv_path = corpus
    with pytest.raises(ValueError, match="only 12 utterances"):
        initial_clustering(FakeEmbed(), csv_path, str(tmp_path / "x"), 13, progress=False)
    with pytest.raises(FileNotFoundError):
        initial_clustering(FakeEmbed(), str(tmp_path / "nope.csv"), str(tmp_path / "x"), 2, progress=False)
    gone = [dict(r, wav=str(tmp_path / f"missing{i}.wav")) for i, r in enumerate(rows)]
    with pytest.raises(FileNotFoundError, match="none of the 12 audio files"):  # a missing corpus stops the run
        initial_clustering(FakeEmbed(), _write_csv(tmp_path / "gone.csv", gone), str(tmp_path / "x"), 2, progress=False)
    bad = [dict(r) for r in rows]
    bad[3]["wav"] = str(tmp_path / "missing.wav")  # one missing file does not (tests/integration/test_reliability.py)
    out = initial_clustering(FakeEmbed(), _write_csv(tmp_path / "bad.csv", bad), str(tmp_path / "z"), 2, progress=False)
    assert out["labels"].shape == (12,) and "missing.wav" in (tmp_path / "skipped_files.txt").read_text()
    dup = rows + [rows[0]]
    with pytest.raises(ValueError, match="unique"):
        initial_clustering(FakeEmbed(), _write_csv(tmp_path / "dup.csv", dup), str(tmp_path / "x"), 2, progress=False)
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "initial_clustering.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="delete"):
        initial_clustering(FakeEmbed(), csv_path, str(tmp_path / "y"), 2, progress=False)


def test_starts_from_given_labels(tmp_path, corpus):
    """init_labels: k-means starts from those clusters' mean embeddings (cluster c = the c-th smallest label), so
    labels that already follow the embeddings come back unchanged; a reused result is not embedded again."""
    rows, csv_path = corpus
    truth = torch.tensor([list(FREQS).index(r["spk_id"]) for r in rows])
    given = truth * 5 + 7  # any ids: 7, 12, 17
    res = initial_clustering(FakeEmbed(), csv_path, str(tmp_path / "a"), 3, progress=False, batch_seconds=3.0,
                             init_labels=given)
    assert torch.equal(res["labels"], truth) and res["config"]["init"] == "labels"
    embed = FakeEmbed()
    again = initial_clustering(embed, csv_path, str(tmp_path / "a"), 3, progress=False, init="labels", init_labels=given)
    assert torch.equal(again["labels"], truth) and embed.calls == 0  # reused: nothing was embedded
    with pytest.raises(ValueError, match="exactly k = 2"):
        initial_clustering(FakeEmbed(), csv_path, str(tmp_path / "b"), 2, progress=False, init_labels=given)
    with pytest.raises(ValueError, match="needs init_labels"):
        initial_clustering(FakeEmbed(), csv_path, str(tmp_path / "c"), 3, progress=False, init="labels")


def test_compare_labels_saves_both_objectives(tmp_path, corpus):
    """compare_labels: the k-means objective of the result and of the labels it may replace, saved with it (a
    reused result has them too); labels that mix the speakers score lower than the k-means of the embeddings."""
    rows, csv_path = corpus
    truth = torch.tensor([list(FREQS).index(r["spk_id"]) for r in rows])
    mixed = torch.arange(len(rows)) % 3  # every cluster mixes the three speakers
    res = initial_clustering(FakeEmbed(), csv_path, str(tmp_path / "a"), 3, progress=False, compare_labels=mixed + 10)
    assert len(set(zip(res["labels"].tolist(), truth.tolist()))) == 3  # the fake embeddings separate the speakers
    assert 0.9 < res["objective"] <= 1.0 + 1e-6 and res["compare_objective"] < res["objective"] - 0.1
    assert isinstance(res["objective"], float) and isinstance(res["compare_objective"], float)  # checkpoint-safe
    again = initial_clustering(FakeEmbed(), csv_path, str(tmp_path / "a"), 3, progress=False, compare_labels=mixed)
    assert (again["objective"], again["compare_objective"]) == (res["objective"], res["compare_objective"])
    same = initial_clustering(FakeEmbed(), csv_path, str(tmp_path / "b"), 3, progress=False, compare_labels=truth)
    assert same["compare_objective"] == pytest.approx(same["objective"])
    assert "objective" not in initial_clustering(FakeEmbed(), csv_path, str(tmp_path / "c"), 3, progress=False)
    with pytest.raises(ValueError, match="compare_labels"):
        initial_clustering(FakeEmbed(), csv_path, str(tmp_path / "d"), 3, progress=False, compare_labels=truth[:5])


def test_given_embeddings_are_clustered_without_a_pass(tmp_path, corpus):
    """embeddings: rows already computed (a re-clustering from an SSRL epoch's records) are clustered as the
    computed ones would be (normalised), nothing is embedded, even with the audio gone; wrong shapes refused."""
    rows, csv_path = corpus
    embed = FakeEmbed()
    computed = initial_clustering(embed, csv_path, str(tmp_path / "a"), 3, progress=False, seed=0)
    from speechbrain_ssrl.initial_clustering import embed_training_set

    _, emb = embed_training_set(FakeEmbed(), csv_path, progress=False)
    for r in rows:
        os.remove(r["wav"])  # the given rows need no audio
    given = initial_clustering(None, csv_path, str(tmp_path / "b"), 3, progress=False, seed=0, embeddings=3.0 * emb)
    assert torch.equal(given["labels"], computed["labels"])
    assert torch.allclose(given["centroids"], computed["centroids"], atol=1e-5)
    assert given["config"]["embeddings"] == "given" and computed["config"]["embeddings"] == "computed"
    with pytest.raises(ValueError, match="one row per utterance"):
        initial_clustering(None, csv_path, str(tmp_path / "c"), 3, progress=False, embeddings=emb[:-1])
