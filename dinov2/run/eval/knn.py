"""Submits the DINOv2 k-NN evaluation to SLURM with submitit (usage: see ``_evaluator``)."""

import sys

from dinov2.run.eval._evaluator import KnnEvaluator as Evaluator
from dinov2.run.eval._evaluator import submit_eval

__all__ = ["Evaluator", "main"]


def main(argv: list[str] | None = None) -> int:
    return submit_eval(Evaluator, argv)


if __name__ == "__main__":
    sys.exit(main())
