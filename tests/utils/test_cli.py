"""Input errors end the command-line programs with status 2 and a message, without a traceback (unless --debug)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ""}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_wrong_config_value_is_one_line_and_status_2(tmp_path: Path) -> None:
    train = str(REPO / "dinov2" / "train" / "train.py")
    args = [train, "--config-file", "train/vit_tiny_cpu", "--output-dir", str(tmp_path / "out"), "optim.epochs=abc"]
    result = _run(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-2:] == [
        "error: wrong type of config value(s) in command-line overrides:",
        "  optim.epochs='abc' is a string; expected an integer like 100",
    ]
    debug = _run(args[0], "--debug", *args[1:], cwd=tmp_path)  # flags go before the key=value overrides
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


@pytest.mark.slow
def test_a_broken_weights_file_given_to_an_eval_is_one_line_naming_it(tmp_path: Path) -> None:
    weights = tmp_path / "teacher_checkpoint.pth"
    weights.write_bytes(b"\x00not a checkpoint")
    knn = str(REPO / "dinov2" / "eval" / "knn.py")
    result = _run(
        knn, "--pretrained-weights", str(weights), "--output-dir", str(tmp_path / "knn"),
        "--train-dataset", f"ImageFolder:root={tmp_path}", "--val-dataset", f"ImageFolder:root={tmp_path}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {weights} is not a PyTorch weights file (17 bytes, starting with b'\\x00not')"
    )
    log = (tmp_path / "knn" / "logs" / "log.txt").read_text()
    assert "Traceback" in log and "WeightsError" in log  # the traceback is kept in the run's log


@pytest.mark.slow
def test_a_tool_given_a_missing_folder(tmp_path: Path) -> None:
    result = _run(str(REPO / "dinov2" / "tools" / "training_curves.py"), str(tmp_path / "nowhere"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'nowhere' / 'training_metrics.json'} does not exist: give a training output folder "
        "(--output-dir of a run)"
    )
