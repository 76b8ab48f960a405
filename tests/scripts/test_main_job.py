"""The main job (scripts/main_job.py) on a tiny Fashion-MNIST look-alike written as idx files by the test."""

import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import main_job  # noqa: E402


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _make_source(root: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """Class c = a bright horizontal band at rows 2c..2c+3 plus noise: separable from raw pixels."""
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 40, size=(len(labels), 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label : 2 * label + 4] = 250
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def test_raw_pixel_knn_separable_classes(tmp_path):
    source = _make_source(tmp_path, train_per_class=8, test_per_class=4)
    assert main_job.raw_pixel_knn(str(source), per_class=5) == pytest.approx(100.0)


def test_raw_pixel_knn_noise_is_near_chance(tmp_path):
    source = _make_source(tmp_path, train_per_class=30, test_per_class=30)
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):  # images no longer carry the class
        labels_len = len(main_job.fmnist.read_idx(tmp_path / name))
        _write_idx(tmp_path / name, np.random.default_rng(1).integers(0, 255, size=(labels_len, 28, 28)))
    assert main_job.raw_pixel_knn(str(source), per_class=-1) < 30.0


def test_knn_top1_reads_the_last_k20_figure(tmp_path):
    results = tmp_path / "results_eval_knn.json"
    results.write_text(
        "\n".join(
            json.dumps(record)
            for record in ({"('full', 20) Top 1": 50.0}, {"('full', 20) Top 5": 90.0}, {"('full', 20) Top 1": 61.5})
        )
    )
    assert main_job._knn_top1(results) == 61.5
    results.write_text(json.dumps({"('full', 10) Top 1": 50.0}))
    with pytest.raises(RuntimeError, match="k=20"):
        main_job._knn_top1(results)


@pytest.mark.slow
def test_main_job_end_to_end(tmp_path):
    (tmp_path / "source").mkdir()
    source = _make_source(tmp_path / "source", train_per_class=6, test_per_class=2)
    out = tmp_path / "out"
    argv = [
        f"--output-dir={out}",
        f"--source={source}",
        "--knn-train-per-class=4",
        "train.batch_size_per_gpu=4",
        "train.num_workers=0",
        "train.OFFICIAL_EPOCH_LENGTH=2",
        "optim.epochs=2",
        "optim.warmup_epochs=1",
        "teacher.warmup_teacher_temp_epochs=1",
        "evaluation.eval_period_iterations=2",
        "train.saveckp_freq=2",
    ]
    assert main_job.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["iterations"] == 4
    assert report["bank_size"] == 40
    assert report["knn_raw_pixels"] == pytest.approx(100.0)
    for key in ("knn_random_init", "knn_pretrained"):
        assert 0.0 <= report[key] <= 100.0
    assert (out / "train" / "eval" / "training_3" / "teacher_checkpoint.pth").is_file()
    assert report["test_size"] == 20
    assert list(report["knn_by_iterations"]) == ["2", "4"]  # exports after iterations 2 and 4 (JSON keys)
    assert report["knn_by_iterations"]["4"] == report["knn_pretrained"]
    assert "| DINOv2 teacher after 4 iterations |" in (out / "report.md").read_text()
    # A second run reuses every step's output (training finds its final checkpoint and does nothing more).
    assert main_job.main(argv) == 0
    second = json.loads((out / "report.json").read_text())
    assert second["knn_pretrained"] == report["knn_pretrained"]
    assert second["train_seconds"] > report["train_seconds"]  # the training times of both runs add up
