"""Submits the DINOv2 k-NN evaluation to SLURM with submitit (flags: the eval's plus dinov2.run.submit's).

    python -m dinov2.run.eval.knn --nodes 1 --ngpus 8 --config-file CFG --pretrained-weights CKPT \
        --output-dir DIR --train-dataset ... --val-dataset ...
"""

import sys

from dinov2.eval.knn import get_args_parser as get_knn_args_parser
from dinov2.run.eval._evaluator import KnnEvaluator as Evaluator
from dinov2.run.eval._evaluator import submit_eval

__all__ = ["Evaluator", "main"]


def main(argv: list[str] | None = None) -> int:
    return submit_eval(
        get_knn_args_parser,
        Evaluator,
        description="Submitit launcher for DINOv2 k-NN evaluation",
        name="dinov2:knn",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
