"""Submits the DINOv2 logistic regression evaluation to SLURM with submitit (eval flags + submit flags).

    PYTHONPATH=. python dinov2/run/eval/log_regression.py --nodes 1 --ngpus 8 --config-file CFG \
        --pretrained-weights CKPT --output-dir DIR --train-dataset ... --val-dataset ...
"""

import sys

from dinov2.run.eval._evaluator import LogRegEvaluator as Evaluator
from dinov2.run.eval._evaluator import submit_eval

__all__ = ["Evaluator", "main"]


def main(argv: list[str] | None = None) -> int:
    return submit_eval(Evaluator, argv)


if __name__ == "__main__":
    sys.exit(main())
