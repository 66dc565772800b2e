"""bench/cluster_count_probe.py: the k sweep and the centroid merging on embeddings whose speakers are known."""

import csv
import json

import torch


def _speakers(tmp_path, seed: int, per: int, noise: float, n_spk: int = 6) -> torch.Generator:
    """Six tight speakers' embeddings (emb.pt) and their train.csv under tmp_path; returns the generator."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_spk, 16, generator=g), dim=1)
    emb = centres.repeat_interleave(per, 0) + noise * torch.randn(n_spk * per, 16, generator=g)
    torch.save(emb, tmp_path / "emb.pt")
    with open(tmp_path / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav", "start", "stop", "spk_id"])
        for i in range(n_spk * per):
            w.writerow([f"u{i}", "1.0", f"u{i}.wav", "0", "16000", f"id{i // per:03d}"])
    return g


def test_probe_reports_each_row_and_finds_separated_speakers(tmp_path, bench_script):
    _speakers(tmp_path, seed=0, per=10, noise=0.01)
    out = tmp_path / "probe.json"
    probe = bench_script("cluster_count_probe")
    probe.main(["--train_csv", str(tmp_path / "train.csv"), "--teacher", f"t={tmp_path / 'emb.pt'}",
                "--k", "3, 6,12", "--k0", "12", "--tau", "0.9", "--linkage", "average", "--seeds", "2",
                "--spectral_neighbors", "5", "--spectral_k", "6", "--eigengap", "2", "--balanced", "--out", str(out)])
    res = json.loads(out.read_text())["results"]["t"]
    assert res["km6"]["nmi"] == 1.0 and res["km6"]["max_speakers_per_home"] == 1  # " 6": written with a space
    assert res["km3"]["clusters"] == 3 and res["km3"]["max_speakers_per_home"] >= 2  # 6 speakers in 3 clusters
    assert res["km12"]["purity"] == 1.0 and res["km12"]["nmi"] < 1.0  # split speakers, none mixed
    # merging 12 centroids at cosine 0.9 joins the splits of each speaker back, and no two speakers
    merged = res["merge_average_0.9"]
    assert merged["clusters"] == 6 and merged["nmi"] == 1.0
    assert {"merge_average_own_mean", "own_mean", "seconds"} <= set(res)
    # the 5-NN graph of 6 tight speakers has 6 parts: spectral into 12 splits speakers, never mixes them
    assert res["spectral12_nn5"]["purity"] == 1.0 and res["spectral12_nn5"]["max_speakers_per_home"] == 1
    assert res["spectral6_nn5"]["nmi"] == 1.0  # the --spectral_k row at the true count
    # six graph components: six zero eigenvalues, then the largest jump of the normalised Laplacian's spectrum
    gap = res["eigengap_nn5"]
    assert gap["k"] == 6 and gap["gap"] > 10 * gap["median_gap"]
    assert res["balanced12"]["clusters"] <= 12 and res["balanced12"]["purity"] == 1.0


def test_true_speaker_ids_numbers_the_sorted_speakers(tmp_path):
    from speechbrain_ssrl.data.views import true_speaker_ids, true_speaker_names, true_speakers

    path = tmp_path / "train.csv"
    path.write_text("ID,duration,wav,start,stop,spk_id\na,1,a.wav,0,1,id2\nb,1,b.wav,0,1,id1\nc,1,c.wav,0,1,id2\n")
    assert true_speaker_ids(str(path)).tolist() == [1, 0, 1]
    assert true_speaker_names(str(path)) == ["id1", "id2"]  # id i is named by the i-th (label_merges.csv)
    ids, names = true_speakers(str(path))  # both from one read (train.py)
    assert ids.tolist() == [1, 0, 1] and names == ["id1", "id2"]
    path.write_text("ID,duration,wav,start,stop,spk_id\na,1,a.wav,0,1,id2\nb,1,b.wav,0,1,\n")
    assert true_speaker_ids(str(path)) is None  # an empty cell: no diagnostics
    assert true_speaker_names(str(path)) is None
    assert true_speakers(str(path)) == (None, None)


def test_graph_merge_rows_join_split_speakers_and_measure_the_true_partition(tmp_path, bench_script):
    """Spectral into 12 splits 6 tight speakers in two; the 6 most k-NN-connected pairs are the splits (merges
    right, NMI back to 1); the true partition of separated speakers offers no pair (no edge joins two speakers)."""
    g = _speakers(tmp_path, seed=1, per=12, noise=0.02)
    out = tmp_path / "probe.json"
    probe = bench_script("cluster_count_probe")
    probe.main(["--train_csv", str(tmp_path / "train.csv"), "--teacher", f"t={tmp_path / 'emb.pt'}", "--k", "6",
                "--k0", "12", "--tau", "0.9", "--linkage", "average", "--seeds", "1", "--spectral_neighbors", "8",
                "--graph_merge", "6, 1", "--out", str(out)])
    res = json.loads(out.read_text())["results"]["t"]
    assert res["spectral12_nn8"]["purity"] == 1.0 and res["spectral12_nn8"]["nmi"] < 1.0
    six = res["graphmerge6_nn8"]
    assert six["same_speaker_pairs"] == 1.0 and six["clusters"] == 6 and six["nmi"] == 1.0
    assert res["graphmerge1_nn8"]["clusters"] == 11  # " 1": one pair merged
    # no neighbour edge joins two of these speakers: the true partition has no pair to merge
    assert res["truth_graphmerge1_nn8"]["clusters"] == 6 and res["truth_graphmerge1_nn8"]["connectivity"] is None
    # the function alone: merged labels are renumbered 0..m-1, the pairs named, the last pair's connectivity given
    lab = torch.arange(4).repeat_interleave(3)
    x = torch.nn.functional.normalize(torch.randn(12, 4, generator=g), dim=1)
    merged, pairs, conn = probe.graph_merge(x, lab, 3, 2)
    assert len(pairs) == 2 and 0.0 <= conn <= 1.0 and sorted(merged.unique().tolist()) == list(range(int(merged.max()) + 1))
