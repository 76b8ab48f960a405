"""Runs a test function on N local gloo ranks (spawned processes with torchrun-style environment variables)."""

import os
import socket
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

import torch
import torch.multiprocessing as mp

_CLEARED_PREFIXES = ("SLURM_", "TORCHELASTIC_")
_TORCHRUN_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(
    rank: int, fn: Callable[..., None], world_size: int, port: int, launcher: str, args: tuple[Any, ...]
) -> None:
    for key in [key for key in os.environ if key.startswith(_CLEARED_PREFIXES) or key in _TORCHRUN_VARS]:
        del os.environ[key]
    os.environ["DINOV2_DEVICE"] = "cpu"
    if launcher == "torchrun":
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world_size),
        )
    else:  # what srun sets for one node running world_size tasks
        os.environ.update(
            SLURM_JOB_ID="12345",
            SLURM_PROCID=str(rank),
            SLURM_NTASKS=str(world_size),
            SLURM_LOCALID=str(rank),
            SLURM_JOB_NUM_NODES="1",
            SLURM_JOB_NODELIST="localhost",
            MASTER_PORT=str(port),
        )
    torch.set_num_threads(1)
    from dinov2 import distributed

    distributed.enable()
    try:
        fn(rank, *args)
    finally:
        distributed.disable()


def run_ranks(
    fn: Callable[..., None], world_size: int, *args: Any, launcher: str = "torchrun", timeout_s: float = 120.0
) -> None:
    """Calls ``fn(rank, *args)`` in ``world_size`` processes inside a gloo group made by ``distributed.enable()``
    from torchrun-style (``launcher="torchrun"``) or srun-style (``"slurm"``) variables; re-raises the first failure
    (with the child's traceback) and kills everything on timeout. ``fn`` must be a module-level function."""
    context = mp.start_processes(
        _entry,
        args=(fn, world_size, free_port(), launcher, args),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=0.1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"{world_size} ranks running {fn.__name__} did not finish within {timeout_s} s")
