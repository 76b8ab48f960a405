"""Process-group setup, queries and collectives that are no-ops in a single process.

Every other module of the package talks to ``torch.distributed`` through these helpers, so the same code runs
as one plain process (no process group), under torchrun, or under SLURM (srun / submitit).

Discovery order used by :func:`enable`:

1. SLURM: ``SLURM_JOB_ID`` and ``SLURM_PROCID`` are set and the process was not started by torchrun
   (``TORCHELASTIC_RUN_ID`` unset), so a torchrun launch inside an allocation keeps torchrun's ranks.
2. Preset environment (torchrun or hand-made): all of ``MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK,
   LOCAL_WORLD_SIZE``. A partial set is an error naming the missing variables.
3. Otherwise a single process: no process group is created, and every collective below is a no-op.

A world size of 1 (e.g. ``torchrun --nproc_per_node=1``) also runs without a process group.
"""

from . import collectives, devices, process_group, state
from .collectives import (
    all_gather_object,
    all_gather_tensor,
    all_reduce,
    all_reduce_async,
    barrier,
    broadcast,
    broadcast_object,
)
from .devices import get_collective_device, get_device, get_device_mesh
from .process_group import disable, enable
from .state import get_global_rank, get_global_size, get_local_rank, get_local_size, is_enabled, is_main_process

__all__ = [*state.__all__, *process_group.__all__, *devices.__all__, *collectives.__all__]
