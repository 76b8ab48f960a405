"""Small general helpers kept at the reference's import path ``dinov2.utils.utils``."""

import logging
import random
import subprocess
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger("dinov2")


def fix_random_seeds(seed: int = 31) -> None:
    """Seeds torch (all devices), numpy and python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


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
