"""The SSRL pseudo-label state: records → queues → votes → pruning → GMM, and checkpoint round trip."""

import torch

from speechbrain_ssrl.pseudo_labels import PseudoLabelState

torch.set_num_threads(1)


def _state(**kw):
    y0 = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return PseudoLabelState(y0, n_clusters=5, queue_length=5, **kw)


def test_labels_fixed_until_update_then_vote_and_prune():
    st = _state()
    idx = torch.arange(8)
    # teacher says: clusters 2 and 3 are one speaker (label 2); cluster 4 never used
    hat = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    losses = torch.linspace(0.1, 3.0, 8)
    for _ in range(2):  # two recording epochs without update: labels stay y0
        st.record(idx, hat, losses)
        out = st.end_epoch(update_labels=False, prune=True)
        assert torch.equal(st.labels, st.y0) and out["labels_changed"] == 0.0
    st.record(idx, hat, losses)
    out = st.end_epoch(update_labels=True, prune=True)
    # queues of utterances 6, 7: [3, 3, 2, 2, 2] → 2
    assert st.labels.tolist() == [0, 0, 1, 1, 2, 2, 2, 2]
    assert out["labels_changed"] == 0.25
    assert sorted(out["newly_pruned"].tolist()) == [3, 4] and out["n_pruned"] == 2
    assert out["n_clusters"] == 3


def test_no_prune_ablation_and_queue_vote_with_candidate():
    st = _state()
    idx = torch.arange(8)
    st.record(idx, torch.full((8,), 1), torch.rand(8))
    out = st.end_epoch(update_labels=True, prune=False)
    assert out["n_pruned"] == 0 and out["newly_pruned"].numel() == 0
    # queue of utterance 0: [0, 0, 1]; with candidate 1 the vote is [0, 0, 1, 1] → tie, oldest wins → 0
    assert st.teacher_targets(torch.tensor([0]), torch.tensor([1]), use_queue=True).tolist() == [0]
    assert st.teacher_targets(torch.tensor([0]), torch.tensor([1]), use_queue=False).tolist() == [1]


def test_gmm_weights_follow_losses_and_disabled_ablation():
    torch.manual_seed(0)
    n = 400
    y0 = torch.randint(0, 10, (n,))
    losses = torch.cat([torch.rand(n // 2) * 0.1 + 0.01, torch.rand(n // 2) * 5 + 3])
    st = PseudoLabelState(y0, 10)
    st.record(torch.arange(n), y0, losses)
    st.end_epoch(update_labels=False, prune=False)
    w = st.weights(torch.arange(n))
    assert w[: n // 2].mean() > 0.9 and w[n // 2 :].mean() < 0.1
    off = PseudoLabelState(y0, 10, noisy_label_model=False)
    off.record(torch.arange(n), y0, losses)
    off.end_epoch(update_labels=False, prune=False)
    assert torch.all(off.weights(torch.arange(n)) == 1)


def test_state_round_trip_with_partial_epoch(tmp_path):
    st = _state()
    st.record(torch.arange(8), torch.tensor([0, 0, 1, 1, 2, 2, 2, 2]), torch.rand(8))
    st.end_epoch(update_labels=True, prune=True)
    st.record(torch.tensor([1, 2]), torch.tensor([0, 1]), torch.rand(2))  # mid-epoch
    path = tmp_path / "pl.ckpt"
    st._save(path)
    other = _state()
    other._load(path, end_of_epoch=False)
    for k, v in st.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, other.state_dict()[k]), k
    assert other.n_recorded() == 2


def test_refuses_changed_corpus_or_k(tmp_path):
    st = _state()
    path = tmp_path / "pl.ckpt"
    st._save(path)
    other = PseudoLabelState(torch.zeros(8, dtype=torch.long), n_clusters=6)
    try:
        other._load(path, end_of_epoch=True)
    except ValueError as e:
        assert "K0" in str(e)
    else:
        raise AssertionError("a changed K0 must be refused")


def test_diagnostics_against_true_labels():
    st = _state()
    true = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    d = st.diagnostics(true)
    assert d["purity"] == 1.0 and d["label_correct"] == 1.0 and 0 < d["nmi"] < 1
