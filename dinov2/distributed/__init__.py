"""Process-group setup, queries and collectives that are no-ops in a single process.

Every other module of the package talks to ``torch.distributed`` through these helpers, so the same code runs
as one plain process (no process group), under torchrun, or under SLURM (srun / submitit).

Discovery order used by :func:`enable`:

1. SLURM: ``SLURM_JOB_ID`` and ``SLURM_PROCID`` are set and the process was not started by torchrun
   (``TORCHELASTIC_RUN_ID`` unset; the reference let SLURM override a torchrun launch inside an allocation).
2. Preset environment (torchrun or hand-made): all of ``MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK,
   LOCAL_WORLD_SIZE``. A partial set is an error naming the missing variables.
3. Otherwise a single process: no process group is created, and every collective below is a no-op.

A world size of 1 (e.g. ``torchrun --nproc_per_node=1``) also runs without a process group.
"""

import logging
import os
import random
import re
import socket
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

__all__ = [
    "is_enabled",
    "get_global_size",
    "get_global_rank",
    "get_local_rank",
    "get_local_size",
    "is_main_process",
    "enable",
    "disable",
    "get_device",
    "get_device_mesh",
    "get_collective_device",
    "barrier",
    "all_reduce",
    "all_reduce_async",
    "all_gather_tensor",
    "all_gather_object",
    "broadcast",
    "broadcast_object",
]

logger = logging.getLogger("dinov2")

_LOCAL_RANK = 0
_LOCAL_WORLD_SIZE = 1
_ENV_BACKUP: dict[str, str | None] = {}  # env values overwritten by enable(), restored by disable()
_DEVICE_MESHES: dict[str, "DeviceMesh"] = {}  # cached meshes over all ranks (see get_device_mesh)

_TORCHRUN_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
_DEVICE_ENV_VAR = "DINOV2_DEVICE"


# ---------------------------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Environment discovery
# ---------------------------------------------------------------------------------------------------------------


def _expand_bracket(expression: str) -> Iterator[str]:
    """Expands the first ``[...]`` of ``expression`` (then recursively the rest): ``n[01-02,5]x`` -> n01x n02x n5x."""
    start = expression.find("[")
    if start < 0:
        yield expression
        return
    end = expression.find("]", start)
    if end < 0:
        raise ValueError(f"unbalanced '[' in SLURM node list item {expression!r}")
    prefix, body, rest = expression[:start], expression[start + 1 : end], expression[end + 1 :]
    for item in body.split(","):
        bounds = item.split("-")
        if len(bounds) == 1:
            values = [bounds[0]]
        elif len(bounds) == 2 and bounds[0].isdigit() and bounds[1].isdigit():
            width = len(bounds[0])  # zero padding is kept: "001-003" -> 001 002 003
            values = [f"{value:0{width}d}" for value in range(int(bounds[0]), int(bounds[1]) + 1)]
        else:
            raise ValueError(f"cannot parse range {item!r} in SLURM node list item {expression!r}")
        for value in values:
            for tail in _expand_bracket(rest):
                yield prefix + value + tail


def _parse_slurm_node_list(node_list: str) -> list[str]:
    """Host names of a SLURM node list such as ``gpu[001-003,7],cpu12`` (commas inside brackets are ranges)."""
    items, depth, current = [], 0, ""
    for char in node_list.strip():
        if char == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        depth += {"[": 1, "]": -1}.get(char, 0)
        current += char
    items.append(current)
    return [host for item in items if item for host in _expand_bracket(item)]


def _get_available_port() -> int:
    """A free TCP port on this host (bound then released; good enough for single-node launches and tests)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _get_master_port(seed: int = 0) -> int:
    """Same port on every task of a job without talking to each other: ``MASTER_PORT`` or one seeded by the job."""
    if "MASTER_PORT" in os.environ:
        return int(os.environ["MASTER_PORT"])
    return random.Random(seed).randint(20000, 60000)


def _is_slurm_job_process() -> bool:
    """A task started by srun / sbatch (not torchrun inside an allocation, not an interactive salloc shell)."""
    return "SLURM_JOB_ID" in os.environ and "SLURM_PROCID" in os.environ and "TORCHELASTIC_RUN_ID" not in os.environ


def _int_env(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


@dataclass
class _TorchDistributedEnvironment:
    """Rank layout of this process, read from SLURM, torchrun or (neither) a single process."""

    master_addr: str = "127.0.0.1"
    master_port: int = 0
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    source: str = "single"

    @classmethod
    def from_env(cls) -> "_TorchDistributedEnvironment":
        if _is_slurm_job_process():
            return cls._from_slurm()
        present = [name for name in _TORCHRUN_VARS if name in os.environ]
        rank_vars = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"}
        if rank_vars.intersection(present):
            missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
            if missing:
                raise RuntimeError(
                    f"partially set distributed environment: {', '.join(present)} set but {', '.join(missing)} "
                    "missing; launch with torchrun (which sets all six) or set the missing variables"
                )
            return cls(
                master_addr=os.environ["MASTER_ADDR"],
                master_port=_int_env("MASTER_PORT"),
                rank=_int_env("RANK"),
                world_size=_int_env("WORLD_SIZE"),
                local_rank=_int_env("LOCAL_RANK"),
                local_world_size=_int_env("LOCAL_WORLD_SIZE"),
                source="env",
            )
        return cls()

    @classmethod
    def _from_slurm(cls) -> "_TorchDistributedEnvironment":
        # Step variables describe the srun step this task belongs to; job variables the whole allocation.
        node_list = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
        nodes = _parse_slurm_node_list(node_list)
        num_nodes_var = "SLURM_STEP_NUM_NODES" if "SLURM_STEP_NUM_NODES" in os.environ else "SLURM_JOB_NUM_NODES"
        num_nodes = _int_env(num_nodes_var) if num_nodes_var in os.environ else len(nodes)
        if num_nodes != len(nodes):
            raise RuntimeError(f"{num_nodes_var}={num_nodes} disagrees with the node list {node_list!r} ({nodes})")
        world_size = _int_env("SLURM_NTASKS") if "SLURM_NTASKS" in os.environ else 1
        if world_size % num_nodes != 0:
            raise RuntimeError(
                f"SLURM_NTASKS={world_size} is not a multiple of the {num_nodes} nodes; "
                "request the same number of tasks on every node (--ntasks-per-node)"
            )
        return cls(
            master_addr=nodes[0],
            master_port=_get_master_port(seed=_int_env("SLURM_JOB_ID")),
            rank=_int_env("SLURM_PROCID"),
            world_size=world_size,
            local_rank=_int_env("SLURM_LOCALID") if "SLURM_LOCALID" in os.environ else 0,
            local_world_size=world_size // num_nodes,
            source="slurm",
        )

    def export(self, *, overwrite: bool) -> None:
        """Writes the six torchrun variables (``init_method="env://"`` reads them); old values kept for disable()."""
        values = {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
        }
        if not overwrite:
            clashes = [f"{k}={os.environ[k]!r} (wants {v!r})" for k, v in values.items() if os.environ.get(k, v) != v]
            if clashes:
                raise RuntimeError(
                    f"the environment disagrees with the {self.source} layout: {', '.join(clashes)}; "
                    "unset them or call enable(overwrite=True)"
                )
        for key, value in values.items():
            _ENV_BACKUP.setdefault(key, os.environ.get(key))
            os.environ[key] = value


# ---------------------------------------------------------------------------------------------------------------
# Device
# ---------------------------------------------------------------------------------------------------------------


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
    return _device_for_local_rank(_LOCAL_RANK)


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
    if key not in _DEVICE_MESHES:
        from torch.distributed.device_mesh import init_device_mesh

        device_type = get_collective_device().type
        if replicate:
            mesh = init_device_mesh(device_type, (get_global_size(), 1), mesh_dim_names=("replicate", "shard"))
        else:
            mesh = init_device_mesh(device_type, (get_global_size(),), mesh_dim_names=("shard",))
        _DEVICE_MESHES[key] = mesh
    return _DEVICE_MESHES[key]


def get_collective_device() -> torch.device:
    """Where tensors for collectives must live: the compute device for NCCL, the CPU for gloo."""
    return get_device() if is_enabled() and dist.get_backend() != "gloo" else torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------------
# Enable / disable
# ---------------------------------------------------------------------------------------------------------------


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
    global _LOCAL_RANK, _LOCAL_WORLD_SIZE
    if is_enabled():
        # A group made earlier (by us or by the caller) is adopted instead of failing.
        _LOCAL_RANK = int(os.environ.get("LOCAL_RANK", _LOCAL_RANK))
        _LOCAL_WORLD_SIZE = int(os.environ.get("LOCAL_WORLD_SIZE", _LOCAL_WORLD_SIZE))
        logger.info("distributed: process group already initialised, reusing it")
        return
    env = _TorchDistributedEnvironment.from_env()
    if env.world_size == 1:
        _LOCAL_RANK, _LOCAL_WORLD_SIZE = 0, 1
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
        _ENV_BACKUP.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING"))
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"
    kwargs = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    _LOCAL_RANK, _LOCAL_WORLD_SIZE = env.local_rank, env.local_world_size
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
    global _LOCAL_RANK, _LOCAL_WORLD_SIZE
    _DEVICE_MESHES.clear()
    if is_enabled():
        dist.destroy_process_group()
    for key, value in _ENV_BACKUP.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _ENV_BACKUP.clear()
    _LOCAL_RANK, _LOCAL_WORLD_SIZE = 0, 1


# ---------------------------------------------------------------------------------------------------------------
# Collectives (no-ops without a process group)
# ---------------------------------------------------------------------------------------------------------------


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
