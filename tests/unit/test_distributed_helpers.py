"""SpeechBrain's distributed helpers where ours were hand-written: ``sync_buffers`` (ddp_all_reduce) and the
``is_distributed_initialized`` checks give what the old code gave, with 2 gloo ranks."""

import torch
from ddp_utils import free_port, init_gloo

from speechbrain_ssrl.brains.base import SSLBrainBase


@torch.no_grad()
def _old_sync_buffers(module):
    """The hand-written version (reference): all_reduce of the float buffers, divided by the world size."""
    world = torch.distributed.get_world_size()
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    flat = torch.cat([b.reshape(-1) for b in bufs])
    torch.distributed.all_reduce(flat)
    flat /= world
    i = 0
    for b in bufs:
        b.copy_(flat[i : i + b.numel()].view_as(b))
        i += b.numel()


def _net(rank):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv1d(3, 5, 1), torch.nn.BatchNorm1d(5), torch.nn.BatchNorm1d(5, affine=False))
    net.train()
    g = torch.Generator().manual_seed(10 + rank)
    for _ in range(3):  # each rank's own running statistics (and num_batches_tracked, an int buffer)
        net(torch.randn(4, 3, 7, generator=g) * (rank + 1))
    return net


def _worker(rank, world, port, out):
    init_gloo(rank, world, port)
    try:
        from speechbrain_ssrl.pseudo_labels import all_gather_cat

        new, old = _net(rank), _net(rank)
        SSLBrainBase.sync_buffers(new)
        _old_sync_buffers(old)
        gathered = all_gather_cat(torch.arange(rank + 2))  # uses the library's is_distributed_initialized
        torch.save({"new": new.state_dict(), "old": old.state_dict(), "gathered": gathered}, f"{out}/r{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_sync_buffers_and_gather_match_the_old_code_on_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt") for r in (0, 1))
    for r in (r0, r1):
        for k, v in r["new"].items():
            assert torch.equal(v, r["old"][k]), k  # bit-equal to the hand-written all_reduce
        assert torch.equal(r["gathered"], torch.tensor([0, 1, 0, 1, 2]))
    for k, v in r0["new"].items():
        assert torch.equal(v, r1["new"][k]), k  # every rank holds the same buffers
    assert not torch.equal(r0["new"]["1.running_mean"], _net(0)[1].running_mean)  # they were averaged


def test_sync_buffers_without_a_process_group_is_a_no_op():
    net = _net(0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    SSLBrainBase.sync_buffers(net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
