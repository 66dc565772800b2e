"""DDP helpers that SpeechBrain does not have (``speechbrain.utils.distributed`` has the rest: barrier,
broadcast, all-reduce, ``is_distributed_initialized``).

* ``all_gather_cat``: the concatenation of a 1-D tensor of any length per rank, in rank order (the
  pseudo-label records, the sharded embeddings);
* ``collective_ok``: whether a collective may be used now: a process group exists and this is not a
  ``run_on_main`` section (where the other ranks wait in a barrier).
"""

from __future__ import annotations

import torch
from speechbrain.utils.distributed import ddp_prevent_block, is_distributed_initialized


def collective_ok() -> bool:
    """True under DDP outside ``run_on_main`` (every rank is expected to take part)."""
    return is_distributed_initialized() and not ddp_prevent_block()


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenation of ``t`` (1-D, any length per rank) over all DDP ranks, in rank order."""
    if not is_distributed_initialized():
        return t
    backend = torch.distributed.get_backend()
    dev = t.device if backend != "nccl" else torch.device("cuda", torch.cuda.current_device())
    x = t.to(dev)
    n = torch.tensor([x.numel()], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(sizes, n)
    m = int(max(int(s) for s in sizes))
    pad = torch.zeros(m, dtype=x.dtype, device=dev)
    pad[: x.numel()] = x
    out = [torch.zeros_like(pad) for _ in sizes]
    torch.distributed.all_gather(out, pad)
    return torch.cat([o[: int(s)] for o, s in zip(out, sizes)]).to(t.device)
