"""Pseudo-label diagnostics: cluster sizes, pruning destinations, detector rates, label_merges.csv."""

import csv

import torch

from speechbrain_ssrl import label_diagnostics as ld


def test_cluster_size_stats():
    assert ld.cluster_size_stats(torch.tensor([0, 0, 0, 2, 2, 5])) == {"size_min": 1, "size_median": 2.0, "size_max": 3}


def test_pruning_report_tells_collapse_from_scatter():
    protos = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-1.0, 0.0]])
    old = torch.tensor([0, 0, 0, 0, 1, 2, 3, 3, 3, 3])
    # cluster 0 absorbed whole by its neighbour 1 (collapse); cluster 3 scattered over 1 and 2
    new = torch.tensor([1, 1, 1, 1, 1, 2, 1, 2, 1, 2])
    r = ld.pruning_report(old, new, torch.tensor([0]), protos)
    assert r["pruned_top_share"] == 1.0 and r["pruned_proto_cos"] > 0.98
    r = ld.pruning_report(old, new, torch.tensor([3]), protos)
    assert r["pruned_top_share"] == 0.5 and r["pruned_proto_cos"] < 0
    assert ld.pruning_report(old, new, torch.tensor([], dtype=torch.long)) == {"n_pruned_now": 0}


def test_detector_rates():
    r = ld.detector_rates({"TP": 30, "FP": 10, "TN": 40, "FN": 20})
    assert r["clean_precision"] == 0.75 and r["clean_recall"] == 0.6 and r["clean_base_rate"] == 0.5
    assert r["clean_lift"] == 1.5


def test_label_merges_counts_same_person_pairs_apart(tmp_path):
    # speakers a, a_copy (one person), b, c share cluster 7; d alone in cluster 3
    names = ["a", "a_copy", "b", "c", "d"]
    true = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    labels = torch.tensor([7, 7, 7, 7, 7, 7, 7, 7, 3, 3])
    rows = ld.label_merges(labels, true, names, {"a": "p1", "a_copy": "p1", "b": "p2", "c": "p3", "d": "p4"})
    assert len(rows) == 1
    assert rows[0]["cluster"] == 7 and rows[0]["n_speakers"] == 4
    assert rows[0]["same_person_pairs"] == 1 and rows[0]["different_person_pairs"] == 5
    summary = ld.write_label_merges(str(tmp_path / "label_merges.csv"), rows)
    assert summary == {"max_speakers_per_home": 4, "merged_same_person_pairs": 1, "merged_different_person_pairs": 5}
    with open(tmp_path / "label_merges.csv") as f:
        assert list(csv.DictReader(f))[0]["speakers"] == "a a_copy b c"


def test_read_persons(tmp_path):
    (tmp_path / "meta.csv").write_text("spk_id,voice,person\nid1,x,mbrola:us1\nid2,y,mbrola:us1\n")
    assert ld.read_persons(f"{tmp_path},/nonexistent") == {"id1": "mbrola:us1", "id2": "mbrola:us1"}
    assert ld.read_persons(None) == {}
