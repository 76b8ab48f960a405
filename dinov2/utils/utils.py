"""Small general helpers, kept at the official DINOv2 code's import path ``dinov2.utils.utils`` for its callers."""

import logging
import subprocess
from pathlib import Path

import numpy as np
from torch import nn

from dinov2.utils.rng import fix_random_seeds  # noqa: F401  (re-exported at its old import path)

logger = logging.getLogger("dinov2")


def get_sha() -> str:
    """``sha: <commit>, status: clean|has uncommitted changes, branch: <name>`` of this checkout, or N/A parts."""
    cwd = Path(__file__).resolve().parent

    def _run(*command: str) -> str:
        return subprocess.check_output(command, cwd=cwd, stderr=subprocess.DEVNULL).decode("ascii").strip()

    sha, diff, branch = "N/A", "clean", "N/A"
    try:
        sha = _run("git", "rev-parse", "HEAD")
        diff = "has uncommitted changes" if _run("git", "diff-index", "HEAD") else "clean"
        branch = _run("git", "rev-parse", "--abbrev-ref", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"sha: {sha}, status: {diff}, branch: {branch}"


def has_batchnorms(model: nn.Module) -> bool:
    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    return any(isinstance(module, bn_types) for module in model.modules())


class CosineScheduler:
    """A per-iteration schedule, precomputed: ``freeze_iters`` zeros, a linear warmup from ``start_warmup_value``
    to ``base_value`` (both ends included), then a cosine from ``base_value`` down (or up) towards ``final_value``.

    ``scheduler[it]`` returns ``final_value`` for ``it >= total_iters``, so a run may step past its length.
    """

    def __init__(
        self,
        base_value: float,
        final_value: float,
        total_iters: int,
        warmup_iters: int = 0,
        start_warmup_value: float = 0,
        freeze_iters: int = 0,
    ) -> None:
        total_iters, warmup_iters, freeze_iters = int(total_iters), int(warmup_iters), int(freeze_iters)
        if min(total_iters, warmup_iters, freeze_iters) < 0:
            raise ValueError(
                f"iteration counts must be >= 0, got total_iters={total_iters}, warmup_iters={warmup_iters}, "
                f"freeze_iters={freeze_iters}"
            )
        if warmup_iters + freeze_iters > total_iters:
            raise ValueError(
                f"warmup_iters ({warmup_iters}) + freeze_iters ({freeze_iters}) exceed total_iters ({total_iters}); "
                "shorten the warmup (e.g. optim.warmup_epochs) or train longer (optim.epochs)"
            )
        self.final_value = final_value
        self.total_iters = total_iters
        freeze = np.zeros(freeze_iters)  # [freeze_iters]
        warmup = np.linspace(start_warmup_value, base_value, warmup_iters)  # [warmup_iters]
        n_cosine = total_iters - warmup_iters - freeze_iters
        steps = np.arange(n_cosine)  # [n_cosine]
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * steps / max(n_cosine, 1)))
        self.schedule = np.concatenate((freeze, warmup, cosine))  # [total_iters]
        assert len(self.schedule) == self.total_iters

    def __len__(self) -> int:
        return self.total_iters

    def __getitem__(self, it: int) -> float:
        if it >= self.total_iters:
            return self.final_value
        return float(self.schedule[it])
