"""Re-clustering inside an SSRL run: the epoch list's checks, the id matching, the state's restart."""

import pytest
import torch

from speechbrain_ssrl.metrics import contingency, hungarian_accuracy, hungarian_pairs
from speechbrain_ssrl.pseudo_labels import PseudoLabelState
from speechbrain_ssrl.reclustering import (
    accepts,
    allows,
    epoch_embeddings,
    map_onto,
    mean_cosine,
    recluster_embeddings,
    recluster_epochs,
    recluster_every,
    recluster_if,
    recluster_max_gain,
)


def test_recluster_epochs_checked_and_sorted():
    assert recluster_epochs(None, 10) == [] and recluster_epochs([], 10) == []
    assert recluster_epochs([8, 4, 6, 4], 10) == [4, 6, 8]
    for bad in ([10], [0], [2.5], [True], 4, "4,6"):
        with pytest.raises(ValueError, match="recluster_epochs"):
            recluster_epochs(bad, 10)


def test_map_onto_keeps_the_ids_of_the_best_overlap():
    # old ids 3, 7, 9 (active); the new clustering numbers the same groups 0, 1, 2 in another order,
    # and moves one utterance
    old = torch.tensor([3, 3, 3, 7, 7, 7, 9, 9, 9])
    new = torch.tensor([2, 2, 1, 0, 0, 0, 1, 1, 1])
    labels, mapping = map_onto(new, old, torch.tensor([3, 7, 9, 11]))
    assert mapping.tolist() == [7, 9, 3]
    assert labels.tolist() == [3, 3, 9, 7, 7, 7, 9, 9, 9]


def test_map_onto_unmatched_clusters_take_free_ids():
    # two new clusters split old id 5; the one without a match takes the smallest unused target id
    old = torch.tensor([5, 5, 5, 5, 8, 8])
    new = torch.tensor([0, 0, 0, 2, 1, 1])
    labels, mapping = map_onto(new, old, torch.tensor([5, 8, 12, 13]))
    assert mapping.tolist() == [5, 8, 12]
    assert labels.tolist() == [5, 5, 5, 12, 8, 8]
    # never an id outside the targets (old id 4 is pruned), never one id twice
    labels, mapping = map_onto(torch.tensor([0, 0, 1, 1]), torch.tensor([4, 4, 6, 6]), torch.tensor([6, 10]))
    assert sorted(mapping.tolist()) == [6, 10] and labels.tolist() == [10, 10, 6, 6]
    with pytest.raises(ValueError, match="target ids"):
        map_onto(torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]), torch.tensor([0, 1]))


def test_hungarian_pairs_dense_and_sparse_match_the_same_items():
    g = torch.Generator().manual_seed(0)
    p = torch.randint(0, 30, (500,), generator=g)
    t = (p // 2 + torch.randint(0, 3, (500,), generator=g)) % 17
    tab = contingency(p.numpy(), t.numpy())
    gains = []
    for method in ("dense", "sparse"):
        a, b = hungarian_pairs(tab, method)
        assert len(set(a.tolist())) == a.size and len(set(b.tolist())) == b.size  # one to one
        gains.append(hungarian_accuracy(tab, method))
    assert gains[0] == pytest.approx(gains[1])


def test_state_restart_from_new_labels():
    st = PseudoLabelState(torch.tensor([0, 0, 1, 1, 2, 2]), 4, queue_length=5)
    st.queue.push(torch.arange(6), torch.tensor([1, 1, 1, 1, 1, 1]))
    st.noise.p[:] = torch.tensor([0.1, 1, 1, 0.2, 1, 1])
    st.pruned[3] = True
    out = st.restart_from(torch.tensor([2, 2, 0, 1, 1, 1]))
    assert out["recluster_changed"] == pytest.approx(5 / 6)
    assert st.labels.tolist() == [2, 2, 0, 1, 1, 1] and st.y0.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.all(st.noise.p == 1)
    # the queues hold the seeded copies of the new labels only: the next vote keeps them against one dissent
    st.queue.push(torch.arange(6), torch.tensor([0, 0, 0, 0, 0, 0]))
    assert st.queue.vote().tolist() == [2, 2, 0, 1, 1, 1]
    state = st.state_dict()
    other = PseudoLabelState(torch.tensor([0, 0, 1, 1, 2, 2]), 4, queue_length=5)
    other.load_state_dict(state)  # a resumed run continues from the restarted queues
    assert other.queue.vote().tolist() == [2, 2, 0, 1, 1, 1] and other.labels.tolist() == [2, 2, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="active clusters"):
        st.restart_from(torch.tensor([3, 3, 0, 1, 1, 1]))  # 3 is pruned


def test_mean_cosine_prefers_the_partition_that_follows_the_embeddings():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    truth = torch.arange(40) % 4
    emb = centres[truth] + 0.1 * torch.randn(40, 16, generator=g)
    shuffled = truth[torch.randperm(40, generator=g)]
    assert 0.9 < mean_cosine(emb, truth) <= 1.0
    assert mean_cosine(emb, shuffled) < mean_cosine(emb, truth) - 0.3
    assert mean_cosine(emb, truth + 10) == pytest.approx(mean_cosine(emb, truth))  # ids need not be 0..k-1


def test_gate_accepts_only_a_small_positive_gain():
    """recluster_max_gain: the new partition replaces the labels only when its objective is above theirs by at most
    the gain (an earlier k-means of the representation), not far above (labels with their own information) nor below."""
    assert accepts(0.90, 0.95, None) and accepts(0.97, 0.70, None)  # no gate: always
    assert accepts(0.9787, 0.9748, 0.02)  # a k-means start: the labels are nearly a k-means of these embeddings
    assert not accepts(0.9699, 0.8326, 0.02)  # noisy true labels: far below the new partition
    assert not accepts(0.9673, 0.9699, 0.02) and not accepts(0.95, 0.95, 0.02)  # the labels are the better partition
    assert recluster_max_gain(None) is None and recluster_max_gain("null") is None
    assert recluster_max_gain(0.02) == 0.02 and recluster_max_gain("0.5") == 0.5
    for bad in (0, -0.1, "x", True, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="recluster_max_gain"):
            recluster_max_gain(bad)


def test_recluster_if_checked_and_applied():
    assert recluster_if(None, True, None) == "always" and recluster_if("always", False, None) == "always"
    assert recluster_if("never_noisy", True, "log_k") == "never_noisy"
    assert recluster_if("never_noisy", True, 2.5) == "never_noisy"
    with pytest.raises(ValueError, match="recluster_if: 'sometimes'"):
        recluster_if("sometimes", True, "log_k")
    with pytest.raises(ValueError, match="noisy_label_model is false"):
        recluster_if("never_noisy", False, "log_k")
    with pytest.raises(ValueError, match="gmm_noisy_floor"):
        recluster_if("never_noisy", True, None)
    # no re-clustering epoch in the run: the condition is never read, only its name is checked
    assert recluster_if("never_noisy", False, None, scheduled=False) == "never_noisy"
    with pytest.raises(ValueError, match="recluster_if: 'sometimes'"):
        recluster_if("sometimes", True, "log_k", scheduled=False)
    assert allows("always", 0) and allows("always", 3)
    assert allows("never_noisy", 0) and not allows("never_noisy", 1) and not allows("never_noisy", 7)
    with pytest.raises(ValueError, match="recluster_if"):
        allows("sometimes", 0)


def test_recluster_every_follows_the_run():
    assert recluster_every(2, 2, 10) == [4, 6, 8]
    assert recluster_every(1, 2, 10) == [3, 4, 5, 6, 7, 8, 9]  # the MiniVox schedule
    assert recluster_every(1, 0, 10) == list(range(1, 10))  # no label-fixed phase: from the first epoch (README, eighteenth session)
    assert recluster_every(2, 2, 20) == [4, 6, 8, 10, 12, 14, 16, 18]
    assert recluster_every(3, 1, 10) == [4, 7]
    assert recluster_every(2, 2, 4) == [] and recluster_every(2, 1, 4) == [3]  # never the last epoch
    assert recluster_every(0, 2, 10) == []
    for bad in (-1, 1.5, "2", True, None):
        with pytest.raises(ValueError, match="recluster_every"):
            recluster_every(bad, 2, 10)


def test_epoch_embeddings_one_row_per_utterance():
    """The epoch's records become one normalised row per utterance; an utterance without a record takes its
    cluster's normalised mean of recorded rows, or its prototype when its cluster has none recorded."""
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    protos = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    idx = torch.tensor([3, 0, 2, 1])  # utterances 4 and 5 not seen
    emb = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    out, filled = epoch_embeddings(idx, emb, labels, protos)
    assert filled == 2 and out.shape == (6, 3)
    assert torch.allclose(out.norm(dim=1), torch.ones(6))
    assert torch.allclose(out[0], torch.tensor([1.0, 0.0, 0.0])) and torch.allclose(out[3], torch.tensor([0.0, 1.0, 0.0]))
    # utterance 5 (cluster 0): the mean of rows 0 and 1, normalised; utterance 4 (cluster 2, none seen): its prototype
    mean0 = torch.nn.functional.normalize(out[0] + out[1], dim=0)
    assert torch.allclose(out[5], mean0) and torch.allclose(out[4], torch.tensor([0.0, 0.0, 1.0]))
    # a repeated index keeps its last record (a DDP sampler's padding)
    out2, _ = epoch_embeddings(torch.tensor([0, 0]), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), labels[:1], protos)
    assert torch.allclose(out2[0], torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="one recorded embedding per index"):
        epoch_embeddings(idx, emb[:3], labels, protos)
    with pytest.raises(ValueError, match="one recorded embedding per index"):
        epoch_embeddings(idx, torch.zeros(4, 0), labels, protos)
    with pytest.raises(ValueError, match="dimension"):
        epoch_embeddings(idx, emb, labels, protos[:, :2])


def test_recluster_embeddings_checked():
    assert recluster_embeddings(None) == "pass" and recluster_embeddings("epoch") == "epoch"
    with pytest.raises(ValueError, match="recluster_embeddings: 'batch'"):
        recluster_embeddings("batch")
