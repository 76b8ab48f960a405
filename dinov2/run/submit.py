"""Submits a task (training or evaluation) to SLURM with submitit: one task per GPU, or CPU-only tasks.

Every site-specific setting is a flag with a ``DINOV2_SLURM_*`` environment default (``--partition``
``DINOV2_SLURM_PARTITION``, ``--cpus-per-task`` ``DINOV2_SLURM_CPUS_PER_TASK``, ...), so a cluster's defaults can
live in the shell profile. Without SLURM (no ``sbatch`` on the PATH) submitit's local executor runs the job on this
machine; ``--cluster debug`` runs it in this very process, which is handy to check a command line before queueing it.
"""

import argparse
import logging
import os
import signal
from pathlib import Path
from typing import Any

import submitit

from dinov2.utils.cluster import get_slurm_executor_parameters, get_slurm_partition, get_user_checkpoint_path

__all__ = ["export_job_environment", "get_args_parser", "get_shared_folder", "submit_jobs"]

logger = logging.getLogger("dinov2")


def get_args_parser(
    description: str | None = None,
    parents: list[argparse.ArgumentParser] | None = None,
    add_help: bool = True,
) -> argparse.ArgumentParser:
    """Launcher flags, added to the task's own parser(s) given as ``parents``."""
    parents = parents or []
    parser = argparse.ArgumentParser(description=description, parents=parents, add_help=add_help)
    parser.add_argument(
        "--ngpus",
        "--gpus",
        "--gpus-per-node",
        default=_env_int("GPUS_PER_NODE", 8),
        type=int,
        help="GPUs per node (0: a CPU-only job, no GPU resource requested) [DINOV2_SLURM_GPUS_PER_NODE]",
    )
    parser.add_argument("--nodes", "--nnodes", default=1, type=int, help="Number of nodes")
    parser.add_argument(
        "--tasks-per-node",
        default=_env_int("TASKS_PER_NODE", None),
        type=int,
        help="Processes per node (default: one per GPU, 1 without GPUs) [DINOV2_SLURM_TASKS_PER_NODE]",
    )
    parser.add_argument(
        "--cpus-per-task",
        default=_env_int("CPUS_PER_TASK", None),
        type=int,
        help="CPU cores per task (default: the cluster's, 10 elsewhere) [DINOV2_SLURM_CPUS_PER_TASK]",
    )
    parser.add_argument(
        "--mem-gb",
        default=_env_int("MEM_GB", None),
        type=int,
        help="Memory per node in GB (default: all of it) [DINOV2_SLURM_MEM_GB]",
    )
    parser.add_argument("--account", default=_env("ACCOUNT"), help="SLURM account [DINOV2_SLURM_ACCOUNT]")
    parser.add_argument("--qos", default=_env("QOS"), help="SLURM quality of service [DINOV2_SLURM_QOS]")
    parser.add_argument(
        "--constraint", default=_env("CONSTRAINT"), help="SLURM node constraint [DINOV2_SLURM_CONSTRAINT]"
    )
    parser.add_argument("--timeout", default=2800, type=int, help="Job duration limit in minutes")
    parser.add_argument(
        "--partition",
        default=get_slurm_partition(),
        type=str,
        help="SLURM partition (default: $DINOV2_SLURM_PARTITION, the cluster's, or SLURM's default)",
    )
    parser.add_argument("--use-volta32", action="store_true", help="Request V100-32GB GPUs (constraint volta32gb)")
    parser.add_argument("--comment", default="", type=str, help="Comment passed to SLURM")
    parser.add_argument("--exclude", default="", type=str, help="Nodes to exclude")
    parser.add_argument(
        "--cluster",
        default=None,
        choices=["slurm", "local", "debug"],
        help="submitit executor (default: slurm if available, else local)",
    )
    try:  # the task's parser usually has --output-dir already
        parser.add_argument("--output-dir", default="", type=str, help="Job folder (default: shared folder/%%j)")
    except argparse.ArgumentError:
        pass
    return parser


def _env(name: str) -> str:
    return os.environ.get(f"DINOV2_SLURM_{name}", "")


def _env_int(name: str, default: int | None) -> int | None:
    value = _env(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"DINOV2_SLURM_{name}={value!r} is not an integer") from None


def get_shared_folder() -> Path:
    """``<user checkpoint path>/experiments`` (created if missing): where jobs go when no --output-dir is given."""
    user_path = get_user_checkpoint_path()
    if user_path is None:
        raise RuntimeError(
            "no shared checkpoint folder is known for this cluster; pass --output-dir or set DINOV2_CHECKPOINT_PATH "
            "to a folder every node can write to"
        )
    path = user_path / "experiments"
    path.mkdir(parents=True, exist_ok=True)
    return path


def submit_jobs(task_class: type, args: argparse.Namespace, name: str) -> Any:
    """Submits ``task_class(args)`` as one job of ``args.nodes`` x ``args.ngpus`` tasks; returns the submitit job.

    The job is requeued up to 30 times after a timeout or preemption (the task's ``checkpoint()`` decides how).
    ``%j`` in ``args.output_dir`` stands for the job id.
    """
    if not args.output_dir:
        args.output_dir = str(get_shared_folder() / "%j")
    # The folders above a "%j" exist now; the job's own folder when it starts (no literal "%j" folder).
    existing = args.output_dir.split("%j", 1)[0] if "%j" in args.output_dir else args.output_dir
    Path(existing).mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(
        folder=args.output_dir, cluster=getattr(args, "cluster", None), slurm_max_num_timeout=30
    )
    executor_params = get_slurm_executor_parameters(
        nodes=args.nodes,
        num_gpus_per_node=args.ngpus,
        tasks_per_node=getattr(args, "tasks_per_node", None),
        timeout_min=args.timeout,
        slurm_signal_delay_s=120,
        **_slurm_kwargs(args),
    )
    executor.update_parameters(name=name, **executor_params)

    job = executor.submit(task_class(args))
    logger.info("Submitted job_id: %s", job.job_id)
    logger.info("Logs and checkpoints will be saved at: %s", args.output_dir.replace("%j", str(job.job_id)))
    return job


def _slurm_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The optional SLURM settings the command line (or its DINOV2_SLURM_* defaults) gives."""
    constraints = [c for c in (getattr(args, "constraint", ""), "volta32gb" if args.use_volta32 else "") if c]
    named = {
        "cpus_per_task": getattr(args, "cpus_per_task", None),
        "mem_gb": getattr(args, "mem_gb", None),
        "slurm_account": getattr(args, "account", ""),
        "slurm_qos": getattr(args, "qos", ""),
        "slurm_constraint": "&".join(constraints),
        "slurm_comment": args.comment,
        "slurm_exclude": args.exclude,
        "slurm_partition": args.partition,
    }
    return {key: value for key, value in named.items() if value not in (None, "")}


def requeue_after_stop() -> None:
    """After a task stopped on a stop signal and saved its checkpoint: hands SIGUSR2 to the handler the job
    runs under (submitit's, restored by the training loop), which calls the task's ``checkpoint()`` and requeues
    the job from rank 0. Without such a handler (a plain process, submitit's debug executor) nothing is requeued."""
    handler = signal.getsignal(signal.SIGUSR2)
    if handler in (signal.SIG_DFL, signal.SIG_IGN, None):
        return
    logger.info("requeuing the job: it resumes from the checkpoint just saved")
    signal.raise_signal(signal.SIGUSR2)


def export_job_environment() -> None:
    """Makes the tasks of a submitit *local* job visible to ``dinov2.distributed.enable`` as torchrun variables
    (SLURM jobs need nothing: enable() reads SLURM's variables)."""
    if "SLURM_JOB_ID" in os.environ or "SUBMITIT_LOCAL_JOB_ID" not in os.environ:
        return
    if int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
