"""Submits the DINOv2 linear evaluation to SLURM with submitit (eval flags + submit flags).

    PYTHONPATH=. python dinov2/run/eval/linear.py --nodes 1 --ngpus 8 --config-file CFG \
        --pretrained-weights CKPT --output-dir DIR --train-dataset ... --val-dataset ...
"""

import sys

from dinov2.run.eval._evaluator import LinearEvaluator as Evaluator
from dinov2.run.eval._evaluator import submit_eval

__all__ = ["Evaluator", "main"]


def main(argv: list[str] | None = None) -> int:
    return submit_eval(Evaluator, argv)


if __name__ == "__main__":
    sys.exit(main())
