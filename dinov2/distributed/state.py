"""This process's place in the process group: the local rank and size recorded by ``enable()``, and the queries
every module asks (all answer for a single process when there is no process group)."""

from typing import TYPE_CHECKING

import torch.distributed as dist

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

__all__ = ["is_enabled", "get_global_size", "get_global_rank", "get_local_rank", "get_local_size", "is_main_process"]

local_rank = 0  # set by enable() / disable()
local_world_size = 1
env_backup: dict[str, str | None] = {}  # env values overwritten by enable(), restored by disable()
device_meshes: dict[str, "DeviceMesh"] = {}  # cached meshes over all ranks (see get_device_mesh)


def is_enabled() -> bool:
    """True when a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_global_size() -> int:
    return dist.get_world_size() if is_enabled() else 1


def get_global_rank() -> int:
    return dist.get_rank() if is_enabled() else 0


def get_local_rank() -> int:
    return local_rank if is_enabled() else 0


def get_local_size() -> int:
    return local_world_size if is_enabled() else 1


def is_main_process() -> bool:
    return get_global_rank() == 0
