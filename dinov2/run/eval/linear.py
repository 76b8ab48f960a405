"""Submits the DINOv2 linear evaluation to SLURM with submitit (flags: the eval's plus dinov2.run.submit's).

    python -m dinov2.run.eval.linear --nodes 1 --ngpus 8 --config-file CFG --pretrained-weights CKPT \
        --output-dir DIR --train-dataset ... --val-dataset ...
"""

import sys

from dinov2.eval.linear import get_args_parser as get_linear_args_parser
from dinov2.run.eval._evaluator import LinearEvaluator as Evaluator
from dinov2.run.eval._evaluator import submit_eval

__all__ = ["Evaluator", "main"]


def main(argv: list[str] | None = None) -> int:
    return submit_eval(
        get_linear_args_parser,
        Evaluator,
        description="Submitit launcher for DINOv2 linear evaluation",
        name="dinov2:linear",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
