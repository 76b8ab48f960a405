"""Entry points run as modules without warnings (the module runner warns when a package imports the module it is
asked to run as __main__)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("module", ["dinov2.train.train", "dinov2.tools.visualize", "dinov2.tools.training_curves"])
def test_module_help_runs_without_warnings(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "RuntimeWarning" not in result.stderr
