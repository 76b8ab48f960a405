"""Submits the DINOv2 logistic regression evaluation to SLURM with submitit (eval flags + submit flags).

    python -m dinov2.run.eval.log_regression --nodes 1 --ngpus 8 --config-file CFG --pretrained-weights CKPT \
        --output-dir DIR --train-dataset ... --val-dataset ...
"""

import sys

from dinov2.eval.log_regression import get_args_parser as get_logreg_args_parser
from dinov2.run.eval._evaluator import LogRegEvaluator as Evaluator
from dinov2.run.eval._evaluator import submit_eval

__all__ = ["Evaluator", "main"]


def main(argv: list[str] | None = None) -> int:
    return submit_eval(
        get_logreg_args_parser,
        Evaluator,
        description="Submitit launcher for DINOv2 logistic regression evaluation",
        name="dinov2:logreg",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
