"""The device this process computes on, the process-group backend for it, and device meshes over all ranks."""

import os
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from . import state
from .state import get_global_size, is_enabled

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

__all__ = ["get_device", "get_device_mesh", "get_collective_device"]

_DEVICE_ENV_VAR = "DINOV2_DEVICE"


def _mps_works() -> bool:
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        return False
    try:
        torch.zeros(1, device="mps")
    except RuntimeError:
        return False
    return True


def _device_for_local_rank(local_rank: int) -> torch.device:
    requested = os.environ.get(_DEVICE_ENV_VAR, "").strip()
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ValueError(f"{_DEVICE_ENV_VAR}={requested!r} is not a torch device (e.g. cpu, cuda, mps)") from None
        if device.type == "cpu" or device.index is not None or device.type == "mps":
            return device
        return torch.device(device.type, local_rank)
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if accelerator is not None and accelerator.type != "mps":
        count = torch.accelerator.device_count()
        if local_rank >= count:
            raise RuntimeError(
                f"local rank {local_rank} has no {accelerator.type} device ({count} visible); start at most "
                f"{count} processes per node (e.g. torchrun --nproc_per_node={count}) or set {_DEVICE_ENV_VAR}=cpu"
            )
        return torch.device(accelerator.type, local_rank)
    if _mps_works():
        return torch.device("mps")
    return torch.device("cpu")


def get_device() -> torch.device:
    """The device this process computes on: ``<accelerator>:<local rank>`` (CUDA...), else MPS if it works, else
    CPU. The environment variable ``DINOV2_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) overrides the choice."""
    return _device_for_local_rank(state.local_rank)


def _backend_for(device: torch.device) -> str:
    """torch's default backend for the device (NCCL for CUDA); gloo for the CPU and MPS."""
    if device.type in ("cpu", "mps"):
        return "gloo"
    return dist.get_default_backend_for_device(device)


def get_device_mesh(*, replicate: bool = False) -> "DeviceMesh":
    """Device mesh over all ranks, created once per process group. 1-D ``("shard",)`` by default (FSDP2 shards
    along it); with ``replicate=True`` 2-D ``("replicate", "shard")`` of shape ``[W, 1]``, on which FSDP2 keeps
    full replicas and all-reduces gradients (DDP semantics, used for ``NO_SHARD``)."""
    if not is_enabled():
        raise RuntimeError("get_device_mesh() needs a process group; call dinov2.distributed.enable() under torchrun")
    key = "replicate" if replicate else "shard"
    if key not in state.device_meshes:
        from torch.distributed.device_mesh import init_device_mesh

        device_type = get_collective_device().type
        if replicate:
            mesh = init_device_mesh(device_type, (get_global_size(), 1), mesh_dim_names=("replicate", "shard"))
        else:
            mesh = init_device_mesh(device_type, (get_global_size(),), mesh_dim_names=("shard",))
        state.device_meshes[key] = mesh
    return state.device_meshes[key]


def get_collective_device() -> torch.device:
    """Where tensors for collectives must live: the compute device for NCCL, the CPU for gloo."""
    return get_device() if is_enabled() and dist.get_backend() != "gloo" else torch.device("cpu")
