"""Two-process gloo groups on the CPU for the unit tests (``torch.multiprocessing.spawn`` workers)."""

import os
import socket

import torch


def free_port() -> int:
    """A free TCP port on localhost for ``MASTER_PORT``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank: int, world: int, port: int) -> None:
    """Joins this worker to a gloo process group on localhost (one torch thread per process)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
