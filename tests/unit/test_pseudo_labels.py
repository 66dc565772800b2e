"""The SSRL pseudo-label state: records → queues → votes → pruning → GMM, and checkpoint round trip."""

import torch
from ddp_utils import free_port, init_gloo

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


def test_gmm_noisy_floor_log_k_counts_the_active_clusters():
    """gmm_noisy_floor: log_k is log of the clusters left after this epoch's pruning (4 of 10 here)."""
    torch.manual_seed(0)
    n = 400
    y0 = torch.arange(n) % 10
    hat = torch.arange(n) % 4  # the vote moves every utterance into clusters 0-3: 6 clusters pruned
    losses = torch.cat([torch.rand(n // 2) * 0.3 + 1.0, torch.rand(n // 2) * 0.3 + 1.6])  # two modes, both < log 10
    st = PseudoLabelState(y0, 10, queue_length=1, gmm_kwargs={"space": "loss", "noisy_floor": "log_k"})
    st.record(torch.arange(n), hat, losses)
    out = st.end_epoch(update_labels=True, prune=True)
    assert out["n_pruned"] == 6 and out["gmm_gated"] == 0.0  # noisy mean ~1.75 > log 4 = 1.39: not gated
    assert st.weights(torch.arange(n))[n // 2:].mean() < 0.1
    st2 = PseudoLabelState(y0, 10, queue_length=1, gmm_kwargs={"space": "loss", "noisy_floor": "log_k"})
    st2.record(torch.arange(n), y0, losses)
    out = st2.end_epoch(update_labels=True, prune=True)
    assert out["n_pruned"] == 0 and out["gmm_gated"] == 1.0  # 10 active: log 10 = 2.30 above both modes
    assert torch.all(st2.weights(torch.arange(n)) == 1)


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


# ------------------------------------------------------------------------------------------------
# DDP: an intra-epoch checkpoint keeps every rank's records of the running epoch, each once
# ------------------------------------------------------------------------------------------------
def _ddp_records_worker(rank, world, port, out_dir):
    import os

    import torch.distributed as dist

    init_gloo(rank, world, port)
    try:
        y0 = torch.arange(12) % 4
        hat = torch.tensor([1, 1, 2, 2, 3, 3, 0, 0, 1, 2, 3, 0])
        loss = torch.linspace(0.1, 2.0, 12)
        part_a = torch.arange(4) + 4 * rank  # utterances 0-3 on rank 0, 4-7 on rank 1
        part_b = torch.arange(2) + 8 + 2 * rank  # 8-9, 10-11

        def run(interrupt):
            st = PseudoLabelState(y0, n_clusters=4, queue_length=3)
            st.record(part_a, hat[part_a], loss[part_a])
            if interrupt:  # what SSRLBrain._save_intra_epoch_ckpt does, then a restart from that file
                held = st.gather_records_to_main()
                path = os.path.join(out_dir, "pl.ckpt")
                if rank == 0:
                    assert held == 8 and st.n_recorded() == 8
                    st._save(path)
                else:
                    assert st.n_recorded() == 0
                dist.barrier()
                st = PseudoLabelState(y0, n_clusters=4, queue_length=3)
                st._load(path, end_of_epoch=False)
                assert st.n_recorded() == (8 if rank == 0 else 0)
            st.record(part_b, hat[part_b], loss[part_b])
            stats = st.end_epoch(update_labels=True, prune=True)
            return dict(idx=st._last_idx.sort().values, labels=st.labels, n=stats["n_relabelled"],
                        weights=st.weights(torch.arange(12)))

        torch.save(dict(ref=run(False), resumed=run(True)), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_intra_epoch_checkpoint_keeps_every_rank_record_once(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_records_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        r = torch.load(tmp_path / f"rank{rank}.pt")
        for run in ("ref", "resumed"):
            assert r[run]["n"] == 12 and torch.equal(r[run]["idx"], torch.arange(12)), (rank, run)
        assert torch.equal(r["ref"]["labels"], r["resumed"]["labels"])
        assert torch.allclose(r["ref"]["weights"], r["resumed"]["weights"])


def test_embedding_records_round_trip_and_discard(tmp_path):
    st = PseudoLabelState(torch.arange(6) % 3, n_clusters=3, queue_length=3)
    emb = torch.randn(6, 4)
    st.record(torch.arange(3), torch.zeros(3, dtype=torch.long), torch.ones(3), embeddings=emb[:3])
    mark = st.record_mark()
    st.record(torch.arange(3, 6), torch.zeros(3, dtype=torch.long), torch.ones(3), embeddings=emb[3:])
    assert st.discard_records(mark) == 3  # a skipped batch drops its embeddings too
    st.record(torch.arange(3, 6), torch.zeros(3, dtype=torch.long), torch.ones(3), embeddings=emb[3:])
    st._save(str(tmp_path / "pl.ckpt"))
    st2 = PseudoLabelState(torch.arange(6) % 3, n_clusters=3, queue_length=3)
    st2._load(str(tmp_path / "pl.ckpt"), end_of_epoch=False)
    rec = st2.take_epoch_records()
    assert torch.equal(rec["idx"], torch.arange(6))
    assert torch.allclose(rec["emb"], emb.half().float())  # kept in fp16
    assert st2.n_recorded() == 0
    # records without embeddings: (n, 0)
    st3 = PseudoLabelState(torch.arange(6) % 3, n_clusters=3)
    st3.record(torch.arange(2), torch.zeros(2, dtype=torch.long), torch.ones(2))
    assert st3.take_epoch_records()["emb"].shape == (2, 0)


def _ddp_embedding_worker(rank, world, port, out_dir):
    import os

    import torch.distributed as dist

    init_gloo(rank, world, port)
    try:
        emb = torch.arange(24, dtype=torch.float32).reshape(8, 3)
        st = PseudoLabelState(torch.arange(8) % 2, n_clusters=2, queue_length=3)
        mine = torch.arange(4) + 4 * rank
        st.record(mine[:2], torch.zeros(2, dtype=torch.long), torch.ones(2), embeddings=emb[mine[:2]])
        held = st.gather_records_to_main()  # intra-epoch checkpoint: rank 0 holds all records so far
        assert held == 4 and st.n_recorded() == (4 if rank == 0 else 0)
        st.record(mine[2:], torch.zeros(2, dtype=torch.long), torch.ones(2), embeddings=emb[mine[2:]])
        rec = st.take_epoch_records()
        order = rec["idx"].argsort()
        torch.save(dict(idx=rec["idx"][order], emb=rec["emb"][order]), os.path.join(out_dir, f"emb{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_embedding_records_are_gathered_once_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_embedding_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        r = torch.load(tmp_path / f"emb{rank}.pt")
        assert torch.equal(r["idx"], torch.arange(8))
        assert torch.equal(r["emb"], torch.arange(24, dtype=torch.float32).reshape(8, 3))


def test_prune_unowned_after_a_restart_from_fewer_clusters():
    """A re-clustering that merged clusters restarts from labels that leave ids unowned: pruned at once, only once."""
    st = _state()  # y0 owns 0..3; 4 is unowned
    st.restart_from(torch.tensor([0, 0, 1, 1, 1, 1, 3, 3]))  # 2 merged into 1
    assert st.prune_unowned().tolist() == [2, 4] and st.pruned.tolist() == [False, False, True, False, True]
    assert st.prune_unowned().numel() == 0  # nothing new
