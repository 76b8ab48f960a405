"""Creating and destroying the default process group (nothing is created for a single process)."""

import logging
import os

import torch
import torch.distributed as dist

from . import state
from .devices import _backend_for, _device_for_local_rank
from .environment import _TorchDistributedEnvironment
from .state import is_enabled

__all__ = ["enable", "disable"]

logger = logging.getLogger("dinov2")


def enable(
    *,
    set_cuda_current_device: bool = True,
    overwrite: bool = False,
    allow_nccl_timeout: bool = False,
    backend: str | None = None,
) -> None:
    """Reads the rank layout from SLURM / torchrun and creates the default process group; in a single process
    (or a world of size 1) it only records local rank 0 of 1 and creates nothing.

    Args:
        set_cuda_current_device: make ``get_device()`` the current accelerator device of this process.
        overwrite: allow overwriting torchrun variables already in the environment that disagree with SLURM.
        allow_nccl_timeout: let NCCL collectives time out (sets ``TORCH_NCCL_ASYNC_ERROR_HANDLING=1``).
        backend: process-group backend; default ``nccl`` when the device is CUDA, ``gloo`` otherwise.
    """
    if is_enabled():
        # A group made earlier (by us or by the caller) is adopted instead of failing.
        state.local_rank = int(os.environ.get("LOCAL_RANK", state.local_rank))
        state.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", state.local_world_size))
        logger.info("distributed: process group already initialised, reusing it")
        return
    env = _TorchDistributedEnvironment.from_env()
    if env.world_size == 1:
        state.local_rank, state.local_world_size = 0, 1
        logger.info("distributed: single process (%s), no process group", env.source)
        return
    if not 0 <= env.rank < env.world_size or not 0 <= env.local_rank < env.local_world_size:
        raise RuntimeError(f"inconsistent rank layout from {env.source}: {env}")
    env.export(overwrite=overwrite)
    device = _device_for_local_rank(env.local_rank)
    if set_cuda_current_device and device.type not in ("cpu", "mps"):
        torch.accelerator.set_device_index(device.index)
    backend = backend or _backend_for(device)
    if allow_nccl_timeout and backend == "nccl":
        state.env_backup.setdefault(
            "TORCH_NCCL_ASYNC_ERROR_HANDLING", os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING")
        )
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"
    kwargs = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    state.local_rank, state.local_world_size = env.local_rank, env.local_world_size
    dist.barrier()
    logger.info(
        "distributed: rank %d/%d (local %d/%d) from %s, backend %s, device %s",
        env.rank,
        env.world_size,
        env.local_rank,
        env.local_world_size,
        env.source,
        backend,
        device,
    )


def disable() -> None:
    """Destroys the process group and restores the environment variables ``enable()`` changed."""
    state.device_meshes.clear()
    if is_enabled():
        dist.destroy_process_group()
    for key, value in state.env_backup.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    state.env_backup.clear()
    state.local_rank, state.local_world_size = 0, 1
