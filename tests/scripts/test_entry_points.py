"""Every command-line program runs both as ``python dinov2/<path>.py`` and as ``python -m dinov2.<module>`` from the
installed package, from any folder, with no PYTHONPATH, and without the module runner's warning (raised when a
package imports the module it is asked to run as __main__)."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIS = [
    "dinov2.train.train",
    "dinov2.eval.knn",
    "dinov2.eval.log_regression",
    "dinov2.eval.linear",
    "dinov2.run.train.train",
    "dinov2.run.eval.knn",
    "dinov2.run.eval.log_regression",
    "dinov2.run.eval.linear",
    "dinov2.tools.visualize",
    "dinov2.tools.training_curves",
]


def _help(how: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [sys.executable, "-W", "error::RuntimeWarning", *how, "--help"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _how(module: str, way: str) -> tuple[str, ...]:
    return ("-m", module) if way == "module" else (str(REPO / Path(*module.split(".")).with_suffix(".py")),)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """All the --help runs at once (each spends its seconds importing torch)."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    runs = [_how(module, way) for module in CLIS for way in ("module", "path")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(runs, pool.map(lambda how: _help(how, cwd), runs)))


@pytest.mark.slow
@pytest.mark.parametrize("module", CLIS)
@pytest.mark.parametrize("way", ["module", "path"])
def test_help_runs_both_ways_from_anywhere(module: str, way: str, results) -> None:
    result = results[_how(module, way)]
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "RuntimeWarning" not in result.stderr
