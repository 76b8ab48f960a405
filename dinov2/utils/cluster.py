"""Cluster defaults for the SLURM launchers (``dinov2/run``): shared checkpoint folder, partition, job resources.

Besides the three Meta clusters (AWS, FAIR, RSC), an unknown machine is ``GENERIC``: it has no built-in paths, so
``DINOV2_CHECKPOINT_PATH`` (or ``--output-dir``) says where jobs write, and SLURM's own default partition is used
unless ``DINOV2_SLURM_PARTITION`` or ``--partition`` names one.
"""

import getpass
import os
import platform
import socket
from enum import Enum
from pathlib import Path
from typing import Any

__all__ = [
    "ClusterType",
    "get_cluster_type",
    "get_checkpoint_path",
    "get_user_checkpoint_path",
    "get_slurm_partition",
    "get_slurm_executor_parameters",
]

CHECKPOINT_PATH_ENV = "DINOV2_CHECKPOINT_PATH"
SLURM_PARTITION_ENV = "DINOV2_SLURM_PARTITION"


class ClusterType(Enum):
    AWS = "aws"
    FAIR = "fair"
    RSC = "rsc"
    GENERIC = "generic"


_CHECKPOINT_PATHS = {
    ClusterType.AWS: Path("/checkpoints"),
    ClusterType.FAIR: Path("/checkpoint"),
    ClusterType.RSC: Path("/checkpoint/dino"),
}
_SLURM_PARTITIONS = {ClusterType.AWS: "learnlab", ClusterType.FAIR: "learnlab", ClusterType.RSC: "learn"}
_CPUS_PER_TASK = {ClusterType.AWS: 12, ClusterType.RSC: 12}


def _guess_cluster_type() -> ClusterType:
    """AWS: Linux kernel release ending in ``-aws``; RSC: host name starting with ``rsc``; FAIR: a ``/checkpoint``
    folder exists; anything else is GENERIC."""
    if platform.system() == "Linux" and platform.uname().release.endswith("-aws"):
        return ClusterType.AWS
    if socket.gethostname().startswith("rsc"):
        return ClusterType.RSC
    if Path("/checkpoint").is_dir():
        return ClusterType.FAIR
    return ClusterType.GENERIC


def get_cluster_type(cluster_type: ClusterType | None = None) -> ClusterType:
    """``cluster_type`` if given, else the guess for this machine."""
    return cluster_type if cluster_type is not None else _guess_cluster_type()


def get_checkpoint_path(cluster_type: ClusterType | None = None) -> Path | None:
    """Root of the shared checkpoint storage: ``$DINOV2_CHECKPOINT_PATH``, else the cluster's; None if unknown."""
    if os.environ.get(CHECKPOINT_PATH_ENV):
        return Path(os.environ[CHECKPOINT_PATH_ENV])
    return _CHECKPOINT_PATHS.get(get_cluster_type(cluster_type))


def get_user_checkpoint_path(cluster_type: ClusterType | None = None) -> Path | None:
    """``<checkpoint path>/<user>``, or None when the checkpoint path is unknown."""
    root = get_checkpoint_path(cluster_type)
    if root is None:
        return None
    user = os.environ.get("USER") or getpass.getuser()
    return root / user


def get_slurm_partition(cluster_type: ClusterType | None = None) -> str | None:
    """``$DINOV2_SLURM_PARTITION``, else the cluster's partition; None lets SLURM pick its default partition."""
    if os.environ.get(SLURM_PARTITION_ENV):
        return os.environ[SLURM_PARTITION_ENV]
    return _SLURM_PARTITIONS.get(get_cluster_type(cluster_type))


def get_slurm_executor_parameters(
    nodes: int,
    num_gpus_per_node: int,
    cluster_type: ClusterType | None = None,
    *,
    tasks_per_node: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """submitit parameters for ``nodes`` nodes with ``num_gpus_per_node`` GPUs each (0: a CPU-only job, no GPU
    resource is requested) and ``tasks_per_node`` tasks (default: one per GPU, 1 on CPU); ``kwargs`` (e.g.
    ``cpus_per_task``, ``mem_gb``, ``slurm_account``) override the defaults."""
    if nodes < 1 or num_gpus_per_node < 0:
        raise ValueError(f"need nodes >= 1 and GPUs per node >= 0, got nodes={nodes}, gpus={num_gpus_per_node}")
    tasks = tasks_per_node if tasks_per_node is not None else max(num_gpus_per_node, 1)
    if tasks < 1:
        raise ValueError(f"need at least one task per node, got tasks_per_node={tasks}")
    cluster_type = get_cluster_type(cluster_type)
    params: dict[str, Any] = {
        "mem_gb": 0,  # 0: all the memory of the node
        "tasks_per_node": tasks,
        "cpus_per_task": _CPUS_PER_TASK.get(cluster_type, 10),
        "nodes": nodes,
    }
    if num_gpus_per_node > 0:
        params["gpus_per_node"] = num_gpus_per_node
    partition = get_slurm_partition(cluster_type)
    if partition is not None:
        params["slurm_partition"] = partition
    if cluster_type == ClusterType.AWS:
        del params["mem_gb"]
    params.update(kwargs)
    return params
