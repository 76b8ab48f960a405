"""Submits a task (training or evaluation) to SLURM with submitit, one task per GPU.

Without SLURM (no ``sbatch`` on the PATH) submitit's local executor runs the job on this machine; ``--cluster
debug`` runs it in this very process, which is handy to check a command line before queueing it.
"""

import argparse
import logging
import os
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
        "--ngpus", "--gpus", "--gpus-per-node", default=8, type=int, help="Number of GPUs (tasks) per node"
    )
    parser.add_argument("--nodes", "--nnodes", default=1, type=int, help="Number of nodes")
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
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(
        folder=args.output_dir, cluster=getattr(args, "cluster", None), slurm_max_num_timeout=30
    )

    kwargs: dict[str, Any] = {}
    if args.use_volta32:
        kwargs["slurm_constraint"] = "volta32gb"
    if args.comment:
        kwargs["slurm_comment"] = args.comment
    if args.exclude:
        kwargs["slurm_exclude"] = args.exclude
    if args.partition:
        kwargs["slurm_partition"] = args.partition
    executor_params = get_slurm_executor_parameters(
        nodes=args.nodes,
        num_gpus_per_node=args.ngpus,
        timeout_min=args.timeout,
        slurm_signal_delay_s=120,
        **kwargs,
    )
    executor.update_parameters(name=name, **executor_params)

    job = executor.submit(task_class(args))
    logger.info("Submitted job_id: %s", job.job_id)
    logger.info("Logs and checkpoints will be saved at: %s", args.output_dir.replace("%j", str(job.job_id)))
    return job


def export_job_environment() -> None:
    """Makes the tasks of a submitit *local* job visible to ``dinov2.distributed.enable`` as torchrun variables
    (SLURM jobs need nothing: enable() reads SLURM's variables)."""
    if "SLURM_JOB_ID" in os.environ or "SUBMITIT_LOCAL_JOB_ID" not in os.environ:
        return
    if int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
