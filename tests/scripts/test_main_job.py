"""The main job (scripts/main_job.py): on generated image folders of mixed sizes and modes (with a corrupt file),
and on a tiny Fashion-MNIST look-alike written as idx files by the test."""

import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import main_job  # noqa: E402

# A few iterations of a small batch, so the end-to-end runs take seconds; the budget still goes through calibration.
_FAST = ["--budget-minutes=0.01", "train.batch_size_per_gpu=4", "optim.epochs=10"]


def _class_image(label: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Class 0: a bright left half, 1: a bright top half, 2: a bright centre square; plus noise."""
    w, h = size
    pixels = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    if label == 0:
        pixels[:, : w // 2] = 220
    elif label == 1:
        pixels[: h // 2] = 220
    else:
        pixels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 220
    return pixels


def _save(pixels: np.ndarray, path: Path, mode: str) -> None:
    """Writes ``pixels`` [H, W, 3] uint8 as a PNG of PIL mode ``mode`` (RGB, L, RGBA or I;16)."""
    if mode == "L":
        Image.fromarray(pixels.mean(-1).astype(np.uint8)).save(path)
    elif mode == "RGBA":
        alpha = np.full(pixels.shape[:2] + (1,), 255, np.uint8)
        Image.fromarray(np.concatenate([pixels, alpha], -1), "RGBA").save(path)
    elif mode == "I;16":
        Image.fromarray(pixels.mean(-1).astype(np.uint16) * 257).save(path)  # 16-bit grayscale PNG
    else:
        Image.fromarray(pixels).save(path)


def _dataset_dir(root: Path, per_class: dict[str, int], unlabeled: int = 0) -> Path:
    rng = np.random.default_rng(0)
    modes, sizes = ("RGB", "L", "RGBA", "I;16"), ((32, 32), (40, 30), (27, 45), (36, 36))
    n = 0
    for split, count in per_class.items():
        for label, name in enumerate(("half_left", "half_top", "square")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                image = _class_image(label, sizes[n % 4], rng)
                _save(image, root / split / name / f"{i}.png", modes[n % 4])
                n += 1
    if unlabeled:
        (root / "unlabeled" / "a").mkdir(parents=True)
        for i in range(unlabeled):
            _save(_class_image(i % 3, (32, 32), rng), root / "unlabeled" / "a" / f"{i}.jpg", "RGB")
    (root / "train" / "square" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


@pytest.mark.slow
def test_dataset_dir_end_to_end_then_reuse_and_recompute(tmp_path: Path) -> None:
    data = _dataset_dir(tmp_path / "data", {"train": 10, "val": 4}, unlabeled=6)
    out = tmp_path / "out"
    argv = [f"--dataset-dir={data}", f"--output-dir={out}", "--knn-train-per-class=8", *_FAST]
    assert main_job.main(argv) == 0

    report = json.loads((out / "report.json").read_text())
    assert report["num_classes"] == 3 and report["bank_size"] == 24 and report["val_size"] == 12
    assert report["train_size"] == 31 + 6  # 30 images + the corrupt file, and the unlabeled ones
    for kind in ("knn", "logreg"):
        for model in ("raw_pixels", "random_init", "pretrained"):
            assert 0.0 <= report[f"{kind}_{model}"] <= 100.0
    assert report["knn_raw_pixels"] > 80.0  # the classes are told apart by their pixels
    assert report["iterations"] >= 10 and report["train_seconds"] > 0
    assert report["online_knn"], "online k-NN ran at the teacher exports"
    text = (out / "report.md").read_text()
    assert "| raw pixels |" in text and "DINOv2 teacher" in text
    for picture in ("losses.png", "collapse.png", "online_knn.png", "features.png"):
        with Image.open(out / picture) as image:
            assert image.width > 100 and image.height > 100, picture
    log = (out / report["train_dir"] / "logs" / "log.txt").read_text()
    assert "corrupt.png" in log  # the unreadable file was named and skipped

    stages = sorted(p.name for p in (out / "stages").iterdir())
    # A second run reuses every stage; an override retrains and re-evaluates the teacher and the random init, but
    # reuses the data lists and keeps the first run's folders.
    assert main_job.main(argv) == 0
    assert sorted(p.name for p in (out / "stages").iterdir()) == stages
    assert main_job.main([*argv, "dino.koleo_loss_weight=0.05"]) == 0
    new = set(p.name for p in (out / "stages").iterdir()) - set(stages)
    assert sum(name.startswith("pretrain-") for name in new) == 1
    assert not any(name.startswith("data-") for name in new)
    assert json.loads((out / "report.json").read_text())["overrides"][-1] == "dino.koleo_loss_weight=0.05"


@pytest.mark.parametrize(
    ("layout", "message"),
    [({"train": 2}, "no val/ folder"), ({"train": 2, "val": 2, "extra": 0}, None)],
)
def test_dataset_dir_layout_errors(tmp_path: Path, layout: dict, message: str | None) -> None:
    data = _dataset_dir(tmp_path / "data", {k: v for k, v in layout.items() if v})
    if message is None:  # a class folder only in val
        (data / "val" / "zebra").mkdir()
        Image.new("RGB", (8, 8)).save(data / "val" / "zebra" / "z.png")
        message = "same class folders"
    with pytest.raises(SystemExit, match=message):
        main_job.main([f"--dataset-dir={data}", f"--output-dir={tmp_path / 'out'}"])


def test_bank_keeps_the_first_images_of_each_class() -> None:
    rows = [("a", 0), ("b", 1), ("c", 0), ("d", 0), ("e", 1)]
    assert main_job._first_per_class(rows, 2) == [("a", 0), ("b", 1), ("c", 0), ("e", 1)]
    assert main_job._first_per_class(rows, -1) == rows


def test_code_version_follows_the_package_sources(tmp_path: Path) -> None:
    package = tmp_path / "dinov2"
    (package / "configs").mkdir(parents=True)
    (package / "model.py").write_text("x = 1\n")
    (package / "configs" / "a.yaml").write_text("a: 1\n")
    (package / "notes.txt").write_text("not code")
    first = main_job.code_version(tmp_path)
    (package / "notes.txt").write_text("edited")
    assert main_job.code_version(tmp_path) == first
    (package / "configs" / "a.yaml").write_text("a: 2\n")
    second = main_job.code_version(tmp_path)
    assert second != first
    (package / "model.py").write_text("x = 2\n")
    assert main_job.code_version(tmp_path) not in (first, second)
    assert main_job.code_version() != first  # the real package


def test_last_value_reads_the_last_figure(tmp_path: Path) -> None:
    results = tmp_path / "results_eval_knn.json"
    lines = ({"('full', 20) Top 1": 50.0}, {"('full', 20) Top 5": 90.0}, {"('full', 20) Top 1": 61.5})
    results.write_text("\n".join(json.dumps(record) for record in lines) + "\nnot json\n")
    assert main_job._last_value(results, "('full', 20) Top 1") == 61.5
    with pytest.raises(SystemExit, match="Top 1"):
        main_job._last_value(results, "('full', 10) Top 1")


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _make_source(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """Class c = a bright horizontal band at rows 2c..2c+3 plus noise: separable from raw pixels."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 40, size=(len(labels), 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label : 2 * label + 4] = 250
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.mark.slow
def test_fashion_mnist_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    source = _make_source(tmp_path / "source", train_per_class=6, test_per_class=2)
    out = tmp_path / "out"
    assert main_job.main([f"--output-dir={out}", f"--source={source}", "--knn-train-per-class=4", *_FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == "fashion_mnist" and report["num_classes"] == 10
    assert (report["bank_size"], report["val_size"], report["train_size"]) == (40, 20, 60)
    assert report["knn_raw_pixels"] == pytest.approx(100.0)
    config = (out / report["train_dir"] / "config.yaml").read_text()
    # the recipe, from 28 px images: 3 x 3 patches of 9 px
    assert "patch_size: 9" in config and "global_crops_size: 27" in config and "local_crops_size: 18" in config
