"""Submits DINOv2 training to SLURM (or runs it locally) with submitit; requeued jobs resume from the last
checkpoint.

Example (from the repository root, with the package installed or ``PYTHONPATH=.``)::

    python dinov2/run/train/train.py --nodes 4 --config-file dinov2/configs/train/vitl16_short.yaml \\
        --output-dir <OUT> train.dataset_path=ImageNet:split=TRAIN:root=<D>:extra=<D>
"""

import argparse
import importlib
import logging
import sys

import submitit

from dinov2.logging import setup_logging
from dinov2.run.submit import export_job_environment, get_args_parser, requeue_after_stop, submit_jobs
from dinov2.utils.config import resolve_config_file

__all__ = ["Trainer", "main"]

logger = logging.getLogger("dinov2")


class Trainer:
    """The submitted callable: runs ``dinov2.train.train.main(args)`` in each task of the job."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def __call__(self) -> object:
        train_module = importlib.import_module("dinov2.train.train")  # imported in the job, not at submission
        job_env = submitit.JobEnvironment()
        self.args.output_dir = str(self.args.output_dir).replace("%j", str(job_env.job_id))
        export_job_environment()
        logger.info("Running %d tasks; this is task %d", job_env.num_tasks, job_env.global_rank)
        result = train_module.main(self.args)
        if isinstance(result, dict) and result.get("stopped"):
            requeue_after_stop()
        return result

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit to requeue (after the training saved a checkpoint on the signal, or when the signal
        came before training started): the same arguments; training resumes from the newest complete checkpoint
        in the output folder (unless --no-resume)."""
        return submitit.helpers.DelayedSubmission(Trainer(self.args))


def main(argv: list[str] | None = None) -> int:
    from dinov2.train import get_args_parser as get_train_args_parser

    train_parser = get_train_args_parser(add_help=False)
    parser = get_args_parser(description="Submitit launcher for DINOv2 training", parents=[train_parser])
    args = parser.parse_args(argv)
    setup_logging()
    args.config_file = str(resolve_config_file(args.config_file)) if args.config_file else ""
    submit_jobs(Trainer, args, name="dinov2:train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
