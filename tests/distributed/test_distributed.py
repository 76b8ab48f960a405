"""Environment discovery, single-process behaviour and 2-rank gloo collectives of dinov2.distributed."""

import os
import random

import pytest
import torch

from dinov2 import distributed
from dinov2.distributed.environment import _parse_slurm_node_list, _TorchDistributedEnvironment
from tests.distributed.spawn import run_ranks

_TORCHRUN = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No launcher variables; the process group and module state are reset afterwards."""
    for key in list(os.environ):
        if key.startswith(("SLURM_", "TORCHELASTIC_")) or key in _TORCHRUN or key == "DINOV2_DEVICE":
            monkeypatch.delenv(key)
    yield monkeypatch
    distributed.disable()


@pytest.mark.parametrize(
    ("node_list", "expected"),
    [
        ("node7", ["node7"]),
        ("a,b,c", ["a", "b", "c"]),
        ("gpu[1-3,5]", ["gpu1", "gpu2", "gpu3", "gpu5"]),
        ("gpu[001-003]", ["gpu001", "gpu002", "gpu003"]),
        ("gpu[09-11],cpu[1,3],login", ["gpu09", "gpu10", "gpu11", "cpu1", "cpu3", "login"]),
        ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
        ("host-a[7]x", ["host-a7x"]),
    ],
)
def test_parse_slurm_node_list(node_list: str, expected: list[str]) -> None:
    assert _parse_slurm_node_list(node_list) == expected


@pytest.mark.parametrize("bad", ["gpu[1-3", "gpu[a-c]", "gpu[1-2-3]"])
def test_parse_slurm_node_list_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match="SLURM node list"):
        _parse_slurm_node_list(bad)


def _set_slurm(monkeypatch: pytest.MonkeyPatch, **overrides: str) -> None:
    values = {
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu[007-008]",
    }
    values.update(overrides)
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def test_slurm_layout(clean_env: pytest.MonkeyPatch) -> None:
    _set_slurm(clean_env)
    env = _TorchDistributedEnvironment.from_env()
    assert (env.source, env.master_addr, env.rank, env.world_size) == ("slurm", "gpu007", 5, 8)
    assert (env.local_rank, env.local_world_size) == (1, 4)
    # Every task of the job derives the same port from the job id.
    assert env.master_port == random.Random(4242).randint(20000, 60000)
    clean_env.setenv("MASTER_PORT", "29123")
    assert _TorchDistributedEnvironment.from_env().master_port == 29123


def test_slurm_wins_over_preset_env_but_not_over_torchrun(clean_env: pytest.MonkeyPatch) -> None:
    _set_slurm(clean_env)
    for key, value in zip(_TORCHRUN, ("h", "1234", "0", "2", "0", "2")):
        clean_env.setenv(key, value)
    assert _TorchDistributedEnvironment.from_env().source == "slurm"
    clean_env.setenv("TORCHELASTIC_RUN_ID", "abc")  # torchrun inside an allocation: its layout is the real one
    env = _TorchDistributedEnvironment.from_env()
    assert (env.source, env.world_size, env.master_addr) == ("env", 2, "h")


def test_slurm_inconsistent_node_count(clean_env: pytest.MonkeyPatch) -> None:
    _set_slurm(clean_env, SLURM_JOB_NUM_NODES="3")
    with pytest.raises(RuntimeError, match="SLURM_JOB_NUM_NODES=3"):
        _TorchDistributedEnvironment.from_env()


def test_partial_torchrun_env_names_missing_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="MASTER_ADDR, MASTER_PORT, LOCAL_RANK, LOCAL_WORLD_SIZE missing"):
        distributed.enable()
    assert not distributed.is_enabled()


def test_export_refuses_conflicting_env_without_overwrite(clean_env: pytest.MonkeyPatch) -> None:
    _set_slurm(clean_env)
    clean_env.setenv("RANK", "3")
    env = _TorchDistributedEnvironment._from_slurm()
    with pytest.raises(RuntimeError, match="RANK='3'"):
        env.export(overwrite=False)
    env.export(overwrite=True)
    assert os.environ["RANK"] == "5" and os.environ["LOCAL_WORLD_SIZE"] == "4"
    distributed.disable()  # restores what export() changed
    assert os.environ["RANK"] == "3" and "LOCAL_WORLD_SIZE" not in os.environ


@pytest.mark.parametrize("launcher", ["none", "torchrun_world_1"])
def test_single_process_has_no_group_and_noop_collectives(clean_env: pytest.MonkeyPatch, launcher: str) -> None:
    if launcher == "torchrun_world_1":
        for key, value in zip(_TORCHRUN, ("127.0.0.1", "29500", "0", "1", "0", "1")):
            clean_env.setenv(key, value)
    distributed.enable()
    distributed.enable()  # repeated calls are harmless
    assert not distributed.is_enabled()
    assert (distributed.get_global_rank(), distributed.get_global_size()) == (0, 1)
    assert (distributed.get_local_rank(), distributed.get_local_size()) == (0, 1)
    assert distributed.is_main_process()
    x = torch.arange(4.0)  # [4]
    assert distributed.all_reduce(x) is x and x.tolist() == [0, 1, 2, 3]
    assert distributed.all_reduce_async(x).wait()
    assert distributed.all_gather_tensor(x) is x
    assert distributed.broadcast(x) is x
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object("x") == "x"
    distributed.barrier()
    with pytest.raises(RuntimeError, match="needs a process group"):
        distributed.get_device_mesh()


def test_get_device_env_override(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DINOV2_DEVICE", "cpu")
    assert distributed.get_device() == torch.device("cpu")
    clean_env.setenv("DINOV2_DEVICE", "not-a-device")
    with pytest.raises(ValueError, match="DINOV2_DEVICE='not-a-device'"):
        distributed.get_device()
    clean_env.delenv("DINOV2_DEVICE")
    expected = "cpu" if not torch.accelerator.is_available() else torch.accelerator.current_accelerator().type
    assert distributed.get_device().type == expected


def _collectives_worker(rank: int) -> None:
    world = distributed.get_global_size()
    assert os.environ["MASTER_ADDR"] == "localhost" and os.environ["RANK"] == str(rank)  # exported from SLURM
    assert distributed.is_enabled() and world == 2
    assert (distributed.get_global_rank(), distributed.get_local_rank(), distributed.get_local_size()) == (
        rank,
        rank,
        2,
    )
    assert distributed.is_main_process() == (rank == 0)
    x = torch.tensor([rank + 1.0, 10.0])  # [2]
    distributed.all_reduce(x)
    assert x.tolist() == [3.0, 20.0]
    y = torch.full((2,), float(rank))  # [2]
    distributed.all_reduce_async(y).wait()
    assert y.tolist() == [1.0, 1.0]
    gathered = distributed.all_gather_tensor(torch.full((1, 3), float(rank)))  # [W, 3]
    assert gathered.tolist() == [[0.0] * 3, [1.0] * 3]
    assert distributed.all_gather_object({"rank": rank}) == [{"rank": 0}, {"rank": 1}]
    z = torch.full((2,), float(rank + 5))  # [2]
    assert distributed.broadcast(z, src=1).tolist() == [6.0, 6.0]
    assert distributed.broadcast_object(f"from {rank}") == "from 0"

    from dinov2.logging.helpers import SmoothedValue

    meter = SmoothedValue()
    for value in range(rank + 1):  # rank 0 sees [0], rank 1 sees [0, 1]
        meter.update(float(value))
    meter.synchronize_between_processes()
    assert (meter.count, meter.total) == (3, 1.0)


@pytest.mark.slow
def test_two_rank_collectives_under_slurm_variables() -> None:
    run_ranks(_collectives_worker, 2, launcher="slurm")
