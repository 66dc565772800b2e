"""Tests of speechbrain_ssrl.label_queue."""

import time

import pytest
import torch

from speechbrain_ssrl.label_queue import PseudoLabelQueue, changed_fraction, unique_last

torch.set_num_threads(1)


def _queue_with(rows, tie="oldest"):
    """A queue whose contents are exactly ``rows`` (oldest first), built by pushes only."""
    rows = torch.tensor(rows)
    q = PseudoLabelQueue(torch.zeros(rows.shape[0], dtype=torch.long), length=rows.shape[1], seed_copies=0, tie=tie)
    idx = torch.arange(rows.shape[0])
    for j in range(rows.shape[1]):
        q.push(idx, rows[:, j])
    assert torch.equal(q.queues, rows)
    return q


def test_seeding_and_fill():
    q = PseudoLabelQueue(torch.tensor([4, 2, 9]), length=5)
    assert q.seed_copies == 2
    assert q.queues.tolist()[0] == [-1, -1, -1, 4, 4]
    assert q.fill.tolist() == [2, 2, 2]
    assert q.vote().tolist() == [4, 2, 9]
    assert q.current.tolist() == [4, 2, 9]
    idx = torch.arange(3)
    for k in range(3):  # floor(L/2) + 1 pushes fill the queue
        q.push(idx, torch.tensor([1, 1, 1]))
        assert q.fill.tolist() == [3 + k] * 3
    assert q.fill.tolist() == [5, 5, 5]
    q.push(idx, torch.tensor([7, 7, 7]))
    assert q.fill.tolist() == [5, 5, 5]
    assert q.queues.tolist()[0] == [4, 1, 1, 1, 7]
    assert q.current.tolist() == [7, 7, 7]


def test_majority_vote():
    q = _queue_with([[9, 9, 9, 3, 7], [1, 2, 2, 2, 1], [5, 5, 5, 5, 5], [0, 1, 2, 3, 3]])
    assert q.vote().tolist() == [9, 2, 5, 3]
    assert q.vote(torch.tensor([3, 0])).tolist() == [3, 9]


def test_tie_rules_hand_example():
    rows = [
        [3, 7, 3, 7, 9],  # 3 first seen earlier; 7 last seen later
        [3, 7, 7, 3, 9],  # 3 first seen earlier and last seen later
        [0, 1, 2, 3, 4],  # five-way tie
        [8, 6, 6, 8, 6],  # no tie
    ]
    assert _queue_with(rows, "oldest").vote().tolist() == [3, 3, 0, 6]
    assert _queue_with(rows, "newest").vote().tolist() == [7, 3, 4, 6]


def test_seed_wins_ties_under_oldest():
    q = PseudoLabelQueue(torch.tensor([5]), length=4, tie="oldest")  # [_, _, 5, 5]
    q.push(torch.tensor([0]), torch.tensor([1]))
    q.push(torch.tensor([0]), torch.tensor([1]))  # [5, 5, 1, 1]
    assert q.vote().tolist() == [5]
    q.tie = "newest"
    assert q.vote().tolist() == [1]


def test_length_one_is_last_label():
    q = PseudoLabelQueue(torch.tensor([3, 4]), length=1)
    assert q.seed_copies == 0 and q.fill.tolist() == [0, 0]
    assert q.vote().tolist() == [3, 4]  # empty queue: initial label
    q.push(torch.tensor([0]), torch.tensor([8]))
    assert q.vote().tolist() == [8, 4]
    q.push(torch.tensor([0, 1]), torch.tensor([2, 6]))
    assert q.vote().tolist() == [2, 6]
    assert q.current.tolist() == [2, 6]


def test_repeated_indices_use_last_occurrence_and_others_unchanged():
    q = PseudoLabelQueue(torch.tensor([0, 0, 0]), length=3, seed_copies=1)
    q.push(torch.tensor([2, 0, 2, 2]), torch.tensor([5, 6, 7, 8]))
    assert q.queues.tolist() == [[-1, 0, 6], [-1, -1, 0], [-1, 0, 8]]
    assert q.fill.tolist() == [2, 1, 2]
    assert unique_last(torch.tensor([4, 1, 4, 1, 3])).tolist() == [3, 4, 2]


def test_peek_vote_does_not_modify():
    q = _queue_with([[2, 2, 1, 1, 2]])
    before = q.queues
    assert q.vote().tolist() == [2]
    assert q.peek_vote(torch.tensor([0]), torch.tensor([1])).tolist() == [1]  # as [2, 1, 1, 2, 1]
    assert torch.equal(q.queues, before)
    assert q.vote().tolist() == [2]


def test_peek_vote_matches_push_then_vote():
    g = torch.Generator().manual_seed(0)
    q = PseudoLabelQueue(torch.randint(0, 4, (50,), generator=g), length=5)
    for _ in range(3):
        q.push(torch.arange(50), torch.randint(0, 4, (50,), generator=g))
    idx = torch.randperm(50, generator=g)[:20]
    lab = torch.randint(0, 4, (20,), generator=g)
    peek = q.peek_vote(idx, lab)
    q.push(idx, lab)
    assert torch.equal(peek, q.vote(idx))


def test_exclude_pruned_labels():
    q = _queue_with([[3, 3, 7, 7, 7], [3, 3, 3, 3, 3], [1, 3, 3, 5, 5]])
    exclude = torch.zeros(10, dtype=torch.bool)
    exclude[7] = True
    exclude[3] = True
    assert q.vote(exclude=exclude).tolist() == [-1, -1, 5]
    exclude[3] = False
    assert q.vote(exclude=exclude).tolist() == [3, 3, 3]


def test_input_validation():
    with pytest.raises(ValueError):
        PseudoLabelQueue(torch.tensor([0, -1]))
    with pytest.raises(ValueError):
        PseudoLabelQueue(torch.tensor([0]), length=0)
    with pytest.raises(ValueError):
        PseudoLabelQueue(torch.tensor([0]), tie="random")
    q = PseudoLabelQueue(torch.tensor([0, 1]))
    with pytest.raises(IndexError):
        q.push(torch.tensor([2]), torch.tensor([0]))
    with pytest.raises(ValueError):
        q.push(torch.tensor([0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        q.push(torch.tensor([0]), torch.tensor([-3]))


def test_changed_fraction():
    assert changed_fraction(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 0.5
    assert changed_fraction(torch.tensor([]), torch.tensor([])) == 0.0


def test_state_round_trip(tmp_path):
    q = PseudoLabelQueue(torch.tensor([1, 2, 3, 4]), length=3, tie="newest")
    q.push(torch.tensor([0, 2]), torch.tensor([5, 6]))
    path = tmp_path / "queue.ckpt"
    q._save(path)
    state = torch.load(path, weights_only=True)  # plain tensors / python only
    assert isinstance(state["queues"], torch.Tensor)
    r = PseudoLabelQueue(torch.tensor([0, 0, 0, 0]), length=3)
    r._load(path, True)
    assert torch.equal(r.queues, q.queues) and torch.equal(r.vote(), q.vote())
    assert r.tie == "newest" and r.n_pushes == 1
    with pytest.raises(ValueError):
        PseudoLabelQueue(torch.zeros(5, dtype=torch.long), length=3).load_state_dict(q.state_dict())


def test_checkpointer_recoverable(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    q = PseudoLabelQueue(torch.tensor([1, 2, 3]), length=5)
    q.push(torch.tensor([1]), torch.tensor([9]))
    Checkpointer(tmp_path, {"queue": q}).save_checkpoint()
    r = PseudoLabelQueue(torch.tensor([1, 2, 3]), length=5)
    Checkpointer(tmp_path, {"queue": r}).recover_if_possible()
    assert torch.equal(r.queues, q.queues)


def test_one_million_speed():
    n, k = 1_000_000, 8000
    g = torch.Generator().manual_seed(0)
    q = PseudoLabelQueue(torch.randint(0, k, (n,), generator=g), length=5)
    labels = torch.randint(0, k, (n,), generator=g)
    idx = torch.randperm(n, generator=g)
    t0 = time.perf_counter()
    q.push(idx, labels)
    votes = q.vote()
    elapsed = time.perf_counter() - t0
    assert votes.shape == (n,)
    # seeded twice with y0 plus one new label: the seed always wins
    assert torch.equal(votes, q.initial)
    assert elapsed < 10.0, f"push + vote of 1M queues took {elapsed:.1f} s"
