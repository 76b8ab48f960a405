"""Collectives that are no-ops without a process group, so that one process needs none."""

import torch
import torch.distributed as dist

from .state import get_global_size, is_enabled

__all__ = [
    "barrier",
    "all_reduce",
    "all_reduce_async",
    "all_gather_tensor",
    "all_gather_object",
    "broadcast",
    "broadcast_object",
]


class _CompletedWork:
    """Stands in for an async collective's handle when there is nothing to wait for."""

    def wait(self) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


def barrier() -> None:
    if is_enabled():
        dist.barrier()


def all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce; returns ``tensor`` (unchanged without a process group)."""
    if is_enabled():
        dist.all_reduce(tensor, op=op)
    return tensor


def all_reduce_async(
    tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM
) -> "dist.Work | _CompletedWork":
    """Starts an in-place all-reduce and returns a handle with ``wait()``; the result is only valid after it.
    Lets the loss centers overlap their reduction with the backward pass."""
    if is_enabled():
        return dist.all_reduce(tensor, op=op, async_op=True)
    return _CompletedWork()


def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates ``tensor`` from every rank along dim 0 (same shape on every rank); a no-op in one process."""
    if not is_enabled():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_global_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)  # [W * B, ...]


def all_gather_object(obj: object) -> list[object]:
    """Picklable ``obj`` from every rank, in rank order (``[obj]`` in one process)."""
    if not is_enabled():
        return [obj]
    gathered: list[object] = [None] * get_global_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_enabled():
        dist.broadcast(tensor, src=src)
    return tensor


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself in one process)."""
    if not is_enabled():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]
