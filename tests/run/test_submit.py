"""Launcher arguments, cluster defaults and submission through submitit's in-process debug executor."""

import argparse
import sys
import types
from pathlib import Path

import pytest

from dinov2.distributed.environment import _TorchDistributedEnvironment
from dinov2.run.submit import export_job_environment, get_args_parser, get_shared_folder, submit_jobs
from dinov2.run.train.train import Trainer
from dinov2.utils import cluster
from dinov2.utils.cluster import ClusterType, get_slurm_executor_parameters


@pytest.fixture
def generic_cluster(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(cluster, "_guess_cluster_type", lambda: ClusterType.GENERIC)
    monkeypatch.delenv(cluster.CHECKPOINT_PATH_ENV, raising=False)
    monkeypatch.delenv(cluster.SLURM_PARTITION_ENV, raising=False)
    return monkeypatch


def test_parser_defaults_and_aliases(generic_cluster: pytest.MonkeyPatch) -> None:
    args = get_args_parser().parse_args([])
    assert (args.ngpus, args.nodes, args.timeout, args.partition) == (8, 1, 2800, None)
    assert (args.use_volta32, args.comment, args.exclude, args.output_dir, args.cluster) == (False, "", "", "", None)
    args = get_args_parser().parse_args(["--gpus-per-node", "2", "--nnodes", "3", "--use-volta32", "--cluster=debug"])
    assert (args.ngpus, args.nodes, args.use_volta32, args.cluster) == (2, 3, True, "debug")
    assert get_args_parser().parse_args(["--gpus", "4"]).ngpus == 4
    generic_cluster.setenv(cluster.SLURM_PARTITION_ENV, "gpu")
    assert get_args_parser().parse_args([]).partition == "gpu"


def test_parser_reuses_parent_output_dir() -> None:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--output-dir", default="./out")
    parent.add_argument("--config-file", default="")
    args = get_args_parser(parents=[parent]).parse_args(["--config-file", "c.yaml", "--ngpus", "1"])
    assert (args.output_dir, args.config_file, args.ngpus) == ("./out", "c.yaml", 1)


@pytest.mark.parametrize(
    ("cluster_type", "cpus", "partition", "has_mem"),
    [
        (ClusterType.FAIR, 10, "learnlab", True),
        (ClusterType.AWS, 12, "learnlab", False),
        (ClusterType.RSC, 12, "learn", True),
        (ClusterType.GENERIC, 10, None, True),
    ],
)
def test_executor_parameters(
    generic_cluster: pytest.MonkeyPatch, cluster_type: ClusterType, cpus: int, partition: str | None, has_mem: bool
) -> None:
    params = get_slurm_executor_parameters(2, 4, cluster_type)
    assert (params["nodes"], params["gpus_per_node"], params["tasks_per_node"]) == (2, 4, 4)
    assert params["cpus_per_task"] == cpus and params.get("slurm_partition") == partition
    assert ("mem_gb" in params) == has_mem
    assert get_slurm_executor_parameters(1, 1, cluster_type, cpus_per_task=3)["cpus_per_task"] == 3
    with pytest.raises(ValueError, match="nodes=0"):
        get_slurm_executor_parameters(0, 8, cluster_type)


def test_checkpoint_paths_and_shared_folder(generic_cluster: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert cluster.get_checkpoint_path(ClusterType.FAIR) == Path("/checkpoint")
    assert cluster.get_checkpoint_path(ClusterType.RSC) == Path("/checkpoint/dino")
    assert cluster.get_checkpoint_path() is None and cluster.get_user_checkpoint_path() is None
    with pytest.raises(RuntimeError, match="DINOV2_CHECKPOINT_PATH"):
        get_shared_folder()
    generic_cluster.setenv(cluster.CHECKPOINT_PATH_ENV, str(tmp_path))
    generic_cluster.setenv("USER", "alice")
    assert get_shared_folder() == tmp_path / "alice" / "experiments"
    assert (tmp_path / "alice" / "experiments").is_dir()


class _WriteTask:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def __call__(self) -> str:
        Path(self.args.output_dir.replace("%j", "done")).mkdir(parents=True, exist_ok=True)
        return f"ran with {self.args.ngpus} gpus"


def _debug_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    argv = ["--cluster", "debug", "--ngpus", "1", "--output-dir", str(tmp_path / "%j"), "--timeout", "5", *extra]
    return get_args_parser().parse_args(argv)


def test_submit_jobs_with_debug_executor(generic_cluster: pytest.MonkeyPatch, tmp_path: Path) -> None:
    job = submit_jobs(_WriteTask, _debug_args(tmp_path, "--comment", "hi", "--exclude", "n1"), name="dinov2:test")
    assert job.result() == "ran with 1 gpus"
    assert (tmp_path / "done").is_dir()


def test_trainer_runs_train_main_and_requeues(generic_cluster: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = []
    fake_train = types.ModuleType("dinov2.train.train")
    fake_train.main = lambda args: seen.append(args.output_dir) or "trained"
    generic_cluster.setitem(sys.modules, "dinov2.train", types.ModuleType("dinov2.train"))
    generic_cluster.setitem(sys.modules, "dinov2.train.train", fake_train)
    args = _debug_args(tmp_path)
    job = submit_jobs(Trainer, args, name="dinov2:train")
    assert job.result() == "trained"
    assert seen == [str(tmp_path / str(job.job_id))]  # %j replaced by the job id
    requeued = Trainer(args).checkpoint()
    assert isinstance(requeued.function, Trainer) and requeued.function.args is args


def test_local_job_tasks_become_torchrun_ranks(generic_cluster: pytest.MonkeyPatch, submitit_local_task) -> None:
    submitit_local_task("777", ntasks=2, rank=1)
    export_job_environment()
    env = _TorchDistributedEnvironment.from_env()
    assert (env.source, env.rank, env.world_size, env.local_rank, env.local_world_size) == ("env", 1, 2, 1, 2)


def test_cpu_only_jobs_request_no_gpu(generic_cluster: pytest.MonkeyPatch) -> None:
    params = get_slurm_executor_parameters(1, 0)
    assert "gpus_per_node" not in params and params["tasks_per_node"] == 1
    params = get_slurm_executor_parameters(2, 0, tasks_per_node=3, cpus_per_task=2, mem_gb=4, slurm_qos="low")
    assert (params["nodes"], params["tasks_per_node"], params["cpus_per_task"], params["mem_gb"]) == (2, 3, 2, 4)
    assert params["slurm_qos"] == "low"
    assert get_slurm_executor_parameters(1, 4)["tasks_per_node"] == 4  # one task per GPU by default
    with pytest.raises(ValueError, match="tasks_per_node=0"):
        get_slurm_executor_parameters(1, 0, tasks_per_node=0)


def test_site_settings_come_from_flags_or_environment(generic_cluster: pytest.MonkeyPatch) -> None:
    from dinov2.run.submit import _slurm_kwargs

    args = get_args_parser().parse_args([])
    assert (args.tasks_per_node, args.cpus_per_task, args.mem_gb, args.account, args.qos) == (None, None, None, "", "")
    assert _slurm_kwargs(args) == {}
    for name, value in {"GPUS_PER_NODE": "0", "CPUS_PER_TASK": "2", "MEM_GB": "8", "ACCOUNT": "lab", "QOS": "hi",
                        "CONSTRAINT": "avx512", "TASKS_PER_NODE": "2"}.items():  # fmt: skip
        generic_cluster.setenv(f"DINOV2_SLURM_{name}", value)
    args = get_args_parser().parse_args(["--qos", "low", "--use-volta32"])
    assert (args.ngpus, args.tasks_per_node) == (0, 2)
    assert _slurm_kwargs(args) == {
        "cpus_per_task": 2,
        "mem_gb": 8,
        "slurm_account": "lab",
        "slurm_qos": "low",  # the flag wins over the environment
        "slurm_constraint": "avx512&volta32gb",
    }
    generic_cluster.setenv("DINOV2_SLURM_MEM_GB", "lots")
    with pytest.raises(ValueError, match="DINOV2_SLURM_MEM_GB='lots' is not an integer"):
        get_args_parser()


def test_job_id_folder_is_not_created_literally(generic_cluster: pytest.MonkeyPatch, tmp_path: Path) -> None:
    job = submit_jobs(_WriteTask, _debug_args(tmp_path / "runs"), name="dinov2:test")
    job.result()
    assert (tmp_path / "runs").is_dir() and not (tmp_path / "runs" / "%j").exists()


def test_trainer_requeues_after_a_stop_signal(generic_cluster: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import signal

    raised = []
    fake_train = types.ModuleType("dinov2.train.train")
    fake_train.main = lambda args: {"stopped": True, "iteration": 3}
    generic_cluster.setitem(sys.modules, "dinov2.train.train", fake_train)
    job = submit_jobs(Trainer, _debug_args(tmp_path), name="dinov2:train")
    assert job.result() == {"stopped": True, "iteration": 3}  # no handler in the debug executor: nothing raised
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: raised.append(signum))  # as submitit's
    try:
        job = submit_jobs(Trainer, _debug_args(tmp_path), name="dinov2:train")
        assert job.result()["stopped"]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert raised == [signal.SIGUSR2]  # handed to the job's handler, which calls checkpoint() and requeues
