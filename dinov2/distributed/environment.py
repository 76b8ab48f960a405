"""Where this process sits in a job: the rank layout read from SLURM (srun / sbatch / submitit), from torchrun's
variables, or a single process."""

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

from . import state

_TORCHRUN_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


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
            state.env_backup.setdefault(key, os.environ.get(key))
            os.environ[key] = value
