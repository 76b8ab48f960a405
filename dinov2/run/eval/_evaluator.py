"""The submitit task and command line shared by the k-NN, linear and log-regression launchers.

Each launcher module (``dinov2/run/eval/knn.py`` ...) only names its ``Evaluator`` subclass; the subclass says
which eval module to run (its ``get_args_parser`` gives the eval flags, its ``main`` runs in the job) and its job
name. A launcher takes the eval's flags plus those of ``dinov2.run.submit``::

    PYTHONPATH=. python dinov2/run/eval/knn.py --nodes 1 --ngpus 8 --config-file <OUT>/config.yaml \\
        --pretrained-weights <OUT>/eval/training_24999/teacher_checkpoint.pth --output-dir <OUT>/eval/knn \\
        --train-dataset ImageNet:split=TRAIN:root=<D>:extra=<D> --val-dataset ImageNet:split=VAL:root=<D>:extra=<D>

(``linear.py`` and ``log_regression.py`` likewise; ``--cluster local`` runs the job on this machine.)
"""

import argparse
import importlib
import logging
import os

logger = logging.getLogger("dinov2")

__all__ = ["Evaluator", "KnnEvaluator", "LinearEvaluator", "LogRegEvaluator", "submit_eval"]


class Evaluator:
    """Picklable callable run by submitit: resolves ``%j`` in the output dir, then calls ``<main_module>.main(args)``.

    ``checkpoint`` requeues the same arguments on preemption or timeout (the linear eval then resumes from its
    own checkpoints in the output dir).
    """

    main_module: str = ""  # the eval module: its get_args_parser() and main(args)
    job_name: str = ""  # the SLURM job name
    description: str = ""  # the launcher's --help header

    def __init__(self, args: argparse.Namespace, main_module: str | None = None) -> None:
        self.args = args
        if main_module is not None:
            self.main_module = main_module

    def __call__(self) -> int:
        import submitit

        from dinov2.run.submit import export_job_environment

        job_env = submitit.JobEnvironment()
        self.args.output_dir = self.args.output_dir.replace("%j", str(job_env.job_id))
        export_job_environment()  # the tasks of a local multi-task job become torchrun ranks
        logger.info("Process group: %d tasks, rank: %d", job_env.num_tasks, job_env.global_rank)
        logger.info("Args: %s", self.args)
        from dinov2.run.submit import requeue_after_stop
        from dinov2.utils.signals import Stopped

        try:
            return importlib.import_module(self.main_module).main(self.args)
        except Stopped:  # a checkpoint was saved on the signal: requeue, the eval resumes from it
            requeue_after_stop()
            return 0

    def checkpoint(self):
        import submitit

        logger.info("Requeuing %s", self.args)
        return submitit.helpers.DelayedSubmission(type(self)(self.args, self.main_module))


# ``submit_jobs`` builds ``task_class(args)`` and pickles it: one module-level subclass per evaluation.


class KnnEvaluator(Evaluator):
    main_module, job_name = "dinov2.eval.knn", "dinov2:knn"
    description = "Submitit launcher for DINOv2 k-NN evaluation"


class LinearEvaluator(Evaluator):
    main_module, job_name = "dinov2.eval.linear", "dinov2:linear"
    description = "Submitit launcher for DINOv2 linear evaluation"


class LogRegEvaluator(Evaluator):
    main_module, job_name = "dinov2.eval.log_regression", "dinov2:logreg"
    description = "Submitit launcher for DINOv2 logistic regression evaluation"


def submit_eval(task_class: type[Evaluator], argv: list[str] | None = None) -> int:
    """Parses the eval's flags plus the SLURM flags and submits ``task_class(args)`` as its job."""
    # Imported here: the submit helpers read cluster settings that only a launch needs.
    from dinov2.logging import setup_logging
    from dinov2.run.submit import get_args_parser, submit_jobs
    from dinov2.utils.config import resolve_config_file

    eval_parser = importlib.import_module(task_class.main_module).get_args_parser(add_help=False)
    args = get_args_parser(description=task_class.description, parents=[eval_parser]).parse_args(argv)
    setup_logging()
    if args.config_file:  # a path (checked now, relative to here) or a packaged name; made absolute for the job
        args.config_file = str(resolve_config_file(args.config_file))
    weights = getattr(args, "pretrained_weights", "") or ""
    if weights and "://" not in weights and weights not in ("random", "raw-pixels"):
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"--pretrained-weights {weights!r} is not a file (relative paths are resolved from {os.getcwd()})"
            )
        args.pretrained_weights = os.path.abspath(weights)
    submit_jobs(task_class, args, name=task_class.job_name)
    return 0
