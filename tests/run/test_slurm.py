"""The SLURM launchers against a real one-node CPU-only SLURM (``scripts/slurm_local.sh``), started here when this
process is root; skipped with the reason otherwise. Jobs are submitted with the launchers' command lines, as a user
would, and signalled with ``scancel --signal=USR2`` (what submitit asks SLURM to send before a time limit)."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.conftest import write_images

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm_local.sh"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# A short CPU training: 4 "epochs" of 10 iterations, a periodic checkpoint at 20, teacher exports at 20 and 40.
TRAIN_OPTS = (
    "student.depth=4",  # a quarter of ViT-Ti's blocks: the jobs' seconds go to SLURM, not to matmuls
    "train.batch_size_per_gpu=4",
    "train.num_workers=1",  # a data-loader worker, which receives the job's signals too
    "train.OFFICIAL_EPOCH_LENGTH=10",
    "optim.epochs=4",
    "train.saveckp_freq=20",
    "evaluation.eval_period_iterations=20",
)


def _status_ok() -> bool:
    return shutil.which("sinfo") is not None and subprocess.run(["bash", str(SCRIPT), "status"]).returncode == 0


@pytest.fixture(scope="module")
def slurm() -> None:
    """A running SLURM: the one already there, or the local one started (as root)."""
    if _status_ok():
        return
    if os.geteuid() != 0:
        pytest.skip("no SLURM running and not root: start one with `sudo bash scripts/slurm_local.sh start`")
    subprocess.run(["bash", str(SCRIPT), "start"], check=True, timeout=900)


def _submit(launcher: str, *args: str) -> str:
    """Runs a launcher (``dinov2/run/...``) and returns the job id it submitted."""
    result = subprocess.run(
        [sys.executable, launcher, *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    match = re.search(r"Submitted job_id: (\d+)", output)
    assert match, output
    return match.group(1)


def _state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], capture_output=True, text=True)
    states = out.stdout.split()
    return states[-1] if states else ""


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _wait_done(job_id: str, timeout: float = 600) -> str:
    def finished() -> bool:
        queued = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip()
        return not queued and _state(job_id) not in ("", "PENDING", "RUNNING", "REQUEUED")

    _wait_for(finished, timeout, f"job {job_id} to finish")
    return _state(job_id)


def _iterations(metrics: Path) -> list[int]:
    if not metrics.is_file():
        return []
    return [json.loads(line)["iteration"] for line in metrics.read_text().splitlines() if line.strip()]


def _job_logs(folder: Path, job_id: str) -> str:
    return "".join(path.read_text(errors="replace") for path in sorted(folder.glob(f"{job_id}_*_log.*")))


def _train_args(out: Path, images: Path, *extra: str) -> list[str]:
    return [
        "--ngpus", "0", "--nodes", "1", "--timeout", "20", "--cpus-per-task", "1", "--mem-gb", "2",
        "--config-file", "dinov2/configs/train/vit_tiny_cpu.yaml", "--output-dir", str(out),
        *extra, f"train.dataset_path=ImageFolder:root={images}", *TRAIN_OPTS,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("slurm_images"), count=24)


def test_cpu_training_job_runs_to_the_end_then_knn(slurm: None, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "train"
    job_id = _submit("dinov2/run/train/train.py", *_train_args(out, images))
    assert _wait_done(job_id) == "COMPLETED", _job_logs(out, job_id)
    assert max(_iterations(out / "training_metrics.json")) == 39
    script = next(out.glob(f"{job_id}_submission.sh")).read_text()
    assert "--gpus-per-node" not in script and "--cpus-per-task=1" in script and "--mem=2GB" in script

    # (d) the k-NN launcher on the exported teacher (labels: one class per file name group)
    labelled = tmp_path / "labelled"
    for i, path in enumerate(sorted(images.glob("*.png"))):
        (labelled / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, labelled / f"c{i % 2}" / path.name)
    teacher = out / "eval" / "training_39" / "teacher_checkpoint.pth"
    knn_out = tmp_path / "knn"
    knn_args = [
        "--ngpus", "0", "--timeout", "10", "--cpus-per-task", "1", "--mem-gb", "2", "--output-dir", str(knn_out),
        "--pretrained-weights", str(teacher), "--train-dataset", f"ImageFolder:root={labelled}",
        "--val-dataset", f"ImageFolder:root={labelled}", "--nb_knn", "3", "--resize-size", "64", "--crop-size", "64",
        "--num-workers", "0", "--batch-size", "8",
    ]  # fmt: skip
    job_id = _submit("dinov2/run/eval/knn.py", *knn_args)
    assert _wait_done(job_id) == "COMPLETED", _job_logs(knn_out, job_id)
    assert "('full', 3) Top 1" in (knn_out / "results_eval_knn.json").read_text()


# The signalled runs are longer (120 iterations, a periodic checkpoint at 60), so that the signal lands well before
# the first checkpoint or well after it, however fast the iterations are.
_LONGER = ("optim.epochs=12", "train.saveckp_freq=60", "evaluation.eval_period_iterations=60")


@pytest.mark.parametrize("signal_after", [5, 65], ids=["before-first-checkpoint", "after-a-checkpoint"])
def test_usr2_saves_requeues_and_resumes_without_losing_an_iteration(
    slurm: None, images: Path, tmp_path: Path, signal_after: int
) -> None:
    out = tmp_path / "train"
    job_id = _submit("dinov2/run/train/train.py", *_train_args(out, images), *_LONGER)  # later overrides win
    metrics = out / "training_metrics.json"
    _wait_for(lambda: max(_iterations(metrics), default=-1) >= signal_after, 300, f"iteration {signal_after}")
    seen = max(_iterations(metrics))
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    assert _wait_done(job_id) == "COMPLETED", _job_logs(out, job_id)

    iterations = _iterations(metrics)
    assert iterations == sorted(set(iterations)), "an iteration was logged twice"
    assert max(iterations) == 119
    log = (out / "logs" / "log.txt").read_text()
    stopped = re.search(r"stopped by SIGUSR2 .*: checkpoint of iteration (\d+) saved", log)
    resumed = re.search(r"resumed from .* \(iteration (\d+)\)", log)
    assert stopped and resumed, log[-3000:]
    assert int(resumed.group(1)) == int(stopped.group(1)) >= seen  # nothing done before the signal is redone
    assert (int(stopped.group(1)) < 59) == (signal_after < 59)  # stopped on the intended side of the checkpoint
    job_logs = _job_logs(out, job_id)
    assert "Traceback" not in job_logs and "Traceback" not in log
    assert "Requeued job" in job_logs or "requeuing the job" in log


def test_two_cpu_tasks_train_with_world_size_two(slurm: None, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "train"
    job_id = _submit("dinov2/run/train/train.py", *_train_args(out, images, "--tasks-per-node", "2"))
    assert _wait_done(job_id) == "COMPLETED", _job_logs(out, job_id)
    assert (out / "logs" / "log.txt.rank1").is_file()
    assert "global_rank=1(2)" in _job_logs(out, job_id)  # submitit saw two tasks ...
    assert "sqrt(8 / 1024)" in (out / "logs" / "log.txt").read_text()  # ... and training a global batch of 2 x 4
    assert max(_iterations(out / "training_metrics.json")) == 39


def test_linear_eval_requeued_mid_run_resumes_from_its_checkpoint(slurm: None, tmp_path: Path) -> None:
    labelled = tmp_path / "labelled"
    for label in ("a", "b"):
        write_images(labelled / label, count=8)
    out = tmp_path / "linear"
    args = [
        "--ngpus", "0", "--timeout", "10", "--cpus-per-task", "1", "--mem-gb", "2", "--output-dir", str(out),
        "--config-file", "dinov2/configs/train/vit_tiny_cpu.yaml", "--pretrained-weights", "random",
        "--opts", "crops.global_crops_size=32", "student.patch_size=16",
        "--train-dataset", f"ImageFolder:root={labelled}", "--val-dataset", f"ImageFolder:root={labelled}",
        "--resize-size", "32", "--crop-size", "32", "--batch-size", "4", "--num-workers", "1",
        "--epochs", "1", "--epoch-length", "400", "--eval-period-iterations", "0", "--learning-rates", "0.1",
    ]  # fmt: skip
    job_id = _submit("dinov2/run/eval/linear.py", *args)
    log_file = out / "logs" / "log.txt"

    def training_started() -> bool:
        return log_file.is_file() and re.search(r"Training \[\d+/400\]", log_file.read_text()) is not None

    _wait_for(training_started, 300, "the linear eval to train")
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    assert _wait_done(job_id) == "COMPLETED", _job_logs(out, job_id)
    log = log_file.read_text()
    stopped = re.search(r"stopped by SIGUSR2 .*: checkpoint of iteration (\d+) saved", log)
    assert stopped, log[-3000:]
    assert f"Starting training from iteration {int(stopped.group(1)) + 1}" in log
    assert (out / "results_eval_linear.json").is_file()
    assert "Traceback" not in _job_logs(out, job_id)
