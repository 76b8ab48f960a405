"""Process-group queries and collectives that are no-ops in a single process.

Every other module of the package talks to ``torch.distributed`` through these helpers, so the same code runs
as one plain process (no process group), under torchrun, or under SLURM.
"""

import torch
import torch.distributed as dist

__all__ = [
    "is_enabled",
    "get_global_size",
    "get_global_rank",
    "get_local_rank",
    "get_local_size",
    "is_main_process",
    "barrier",
    "all_reduce",
    "all_reduce_async",
    "all_gather_tensor",
    "broadcast",
]

_LOCAL_RANK = 0
_LOCAL_WORLD_SIZE = 1


def is_enabled() -> bool:
    """True when a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_global_size() -> int:
    return dist.get_world_size() if is_enabled() else 1


def get_global_rank() -> int:
    return dist.get_rank() if is_enabled() else 0


def get_local_rank() -> int:
    return _LOCAL_RANK if is_enabled() else 0


def get_local_size() -> int:
    return _LOCAL_WORLD_SIZE if is_enabled() else 1


def is_main_process() -> bool:
    return get_global_rank() == 0


def barrier() -> None:
    if is_enabled():
        dist.barrier()


def all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce; returns ``tensor`` (unchanged without a process group)."""
    if is_enabled():
        dist.all_reduce(tensor, op=op)
    return tensor


def all_reduce_async(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> dist.Work | None:
    """Starts an in-place all-reduce and returns its handle (call ``.wait()``); None without a process group."""
    if is_enabled():
        return dist.all_reduce(tensor, op=op, async_op=True)
    return None


def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates ``tensor`` from every rank along dim 0 (same shape on every rank); a no-op in one process."""
    if not is_enabled():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_global_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_enabled():
        dist.broadcast(tensor, src=src)
    return tensor
