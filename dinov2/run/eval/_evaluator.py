"""The submitit task shared by the k-NN, linear and log-regression launchers."""

import argparse
import importlib
import logging
import os

logger = logging.getLogger("dinov2")


class Evaluator:
    """Picklable callable run by submitit: resolves ``%j`` in the output dir, then calls ``<module>.main(args)``.

    ``checkpoint`` requeues the same arguments on preemption or timeout (the linear eval then resumes from its
    own checkpoints in the output dir).
    """

    def __init__(self, args: argparse.Namespace, main_module: str) -> None:
        self.args = args
        self.main_module = main_module

    def __call__(self) -> int:
        self._setup_args()
        main = importlib.import_module(self.main_module).main
        return main(self.args)

    def checkpoint(self):
        import submitit

        logger.info("Requeuing %s", self.args)
        return submitit.helpers.DelayedSubmission(type(self)(self.args, self.main_module))

    def _setup_args(self) -> None:
        import submitit

        job_env = submitit.JobEnvironment()
        self.args.output_dir = self.args.output_dir.replace("%j", str(job_env.job_id))
        logger.info("Process group: %d tasks, rank: %d", job_env.num_tasks, job_env.global_rank)
        logger.info("Args: %s", self.args)


def submit_eval(
    eval_parser_fn, task_class: type[Evaluator], *, description: str, name: str, argv: list[str] | None = None
) -> int:
    """Parses the eval flags plus the SLURM flags and submits ``task_class(args)`` as job ``name``."""
    # Imported here: the submit helpers read cluster settings that only a launch needs.
    from dinov2.logging import setup_logging
    from dinov2.run.submit import get_args_parser, submit_jobs

    parents = [eval_parser_fn(add_help=False)]
    args_parser = get_args_parser(description=description, parents=parents)
    args = args_parser.parse_args(argv)
    setup_logging()
    if not args.config_file or not os.path.exists(args.config_file):
        raise FileNotFoundError(f"--config-file {args.config_file!r} does not exist; pass the training config.yaml")
    submit_jobs(task_class, args, name=name)
    return 0


# ``submit_jobs`` builds ``task_class(args)``: one module-level (picklable) subclass per evaluation.


class KnnEvaluator(Evaluator):
    def __init__(self, args: argparse.Namespace, main_module: str = "dinov2.eval.knn") -> None:
        super().__init__(args, main_module)


class LinearEvaluator(Evaluator):
    def __init__(self, args: argparse.Namespace, main_module: str = "dinov2.eval.linear") -> None:
        super().__init__(args, main_module)


class LogRegEvaluator(Evaluator):
    def __init__(self, args: argparse.Namespace, main_module: str = "dinov2.eval.log_regression") -> None:
        super().__init__(args, main_module)
