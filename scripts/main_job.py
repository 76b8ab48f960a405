"""The main job: pretrain a small ViT with DINOv2 on Fashion-MNIST, then measure its features with k-NN.

Steps (each is skipped when its output already exists, so an interrupted job picks up where it stopped):

1. write the Fashion-MNIST class-folder trees (``scripts/prepare_fashion_mnist.py``);
2. k-NN baselines on the same memory bank: raw pixels, and a randomly initialised backbone;
3. pretrain with ``dinov2/train/train.py`` (config ``--config-file``, default the Fashion-MNIST preset) on the
   60,000 training images, labels unused; training resumes from its last checkpoint if the job is re-run;
4. k-NN of every exported teacher (``evaluation.eval_period_iterations``), showing the progress;
5. ``<output>/report.md`` and ``report.json``: the figures side by side, printed at the end.

    python scripts/main_job.py --output-dir runs/fashion_mnist [train overrides key=value ...]
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

import prepare_fashion_mnist as fmnist  # noqa: E402

from dinov2.eval.knn import KnnModule  # noqa: E402

logger = logging.getLogger("dinov2")

DEFAULT_CONFIG = "dinov2/configs/train/vit_tiny_fashion_mnist.yaml"
KNN_K = 20
KNN_T = 0.07


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="runs/fashion_mnist", help="Everything is written here")
    parser.add_argument("--data-dir", default=None, help="Image trees (default: <output-dir>/data)")
    parser.add_argument("--source", default=fmnist.DEFAULT_SOURCE, help="Folder with the Fashion-MNIST idx files")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="Training config")
    parser.add_argument(
        "--knn-train-per-class",
        type=int,
        default=1000,
        help="k-NN memory bank: the first n training images of each class (-1: all 60,000)",
    )
    parser.add_argument("opts", nargs="*", default=[], help="Training config overrides, key=value")
    return parser


def _run(command: list[str], log_name: str, output_dir: Path) -> float:
    """Runs ``command`` from the repository root, streaming its output to the console; returns its seconds."""
    logger.info("running: %s", " ".join(command))
    start = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    # Half the cores for torch's intra-op threads, the rest for the data-loader workers: oversubscribed OpenMP
    # threads spin-wait, which made a 2-core machine 7x slower (15 s instead of 2.1 s per training iteration).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    result = subprocess.run(command, cwd=REPO, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"step failed with exit code {result.returncode}: {' '.join(command)} (logs: {log_name})")
    return time.monotonic() - start


def raw_pixel_knn(source: str, per_class: int) -> float:
    """Cosine k-NN top-1 (%) on raw pixels, training-set mean subtracted, with the same bank as the model runs."""
    train_images, train_labels = fmnist.load_split(source, "train")
    test_images, test_labels = fmnist.load_split(source, "test")
    if per_class > 0:
        keep = np.concatenate([np.flatnonzero(train_labels == c)[:per_class] for c in range(len(fmnist.CLASS_NAMES))])
        keep.sort()
        train_images, train_labels = train_images[keep], train_labels[keep]
    train = torch.tensor(train_images.reshape(len(train_images), -1), dtype=torch.float32)
    test = torch.tensor(test_images.reshape(len(test_images), -1), dtype=torch.float32)
    mean = train.mean(dim=0, keepdim=True)
    train = torch.nn.functional.normalize(train - mean, dim=1)
    test = torch.nn.functional.normalize(test - mean, dim=1)
    knn = KnnModule(train, torch.tensor(train_labels, dtype=torch.long), nb_knn=[KNN_K], T=KNN_T, num_classes=10)
    test_labels = torch.tensor(test_labels, dtype=torch.long)
    correct = 0
    for start in range(0, len(test), 1000):
        scores = knn(test[start : start + 1000])[KNN_K]
        correct += (scores.argmax(dim=1) == test_labels[start : start + 1000]).sum().item()
    return 100.0 * correct / len(test)


def _knn_top1(results_file: Path) -> float:
    """The ``('full', k) Top 1`` figure of the last k-NN run written to ``results_file``."""
    top1 = None
    for line in results_file.read_text().splitlines():
        for key, value in json.loads(line).items():
            if key.endswith(f", {KNN_K}) Top 1"):
                top1 = float(value)
    if top1 is None:
        raise RuntimeError(f"no k={KNN_K} Top 1 figure in {results_file}")
    return top1


def model_knn(config_file: Path, weights: str, bank: Path, test: Path, output_dir: Path) -> tuple[float, float]:
    """k-NN top-1 (%) of a backbone through ``dinov2/eval/knn.py``; returns (top-1, seconds). Cached in output_dir."""
    results_file = output_dir / "results_eval_knn.json"
    if results_file.is_file():
        return _knn_top1(results_file), 0.0
    crop = _global_crops_size(config_file)
    command = [
        sys.executable,
        "dinov2/eval/knn.py",
        f"--config-file={config_file}",
        f"--pretrained-weights={weights}",
        f"--output-dir={output_dir}",
        f"--train-dataset=ImageFolder:root={bank}",
        f"--val-dataset=ImageFolder:root={test}",
        f"--nb_knn={KNN_K}",
        f"--temperature={KNN_T}",
        f"--resize-size={crop}",
        f"--crop-size={crop}",
        "--batch-size=256",
        "--num-workers=2",
    ]
    seconds = _run(command, str(output_dir), output_dir)
    return _knn_top1(results_file), seconds


def _global_crops_size(config_file: Path) -> int:
    from omegaconf import OmegaConf

    return int(OmegaConf.load(config_file).crops.global_crops_size)


def _add_train_seconds(train_dir: Path, seconds: float) -> float:
    """Adds this run's training time to the total kept in ``train_dir`` (a resumed job counts every part)."""
    path = train_dir / "main_job_train_seconds.json"
    total = json.loads(path.read_text())["seconds"] + seconds if path.is_file() else seconds
    path.write_text(json.dumps({"seconds": total}) + "\n")
    return total


def _teacher_exports(train_dir: Path) -> dict[int, Path]:
    """``{iterations trained: teacher_checkpoint.pth}`` of every export, in training order."""
    exports = {
        int(path.parent.name[len("training_") :]) + 1: path
        for path in (train_dir / "eval").glob("training_*/teacher_checkpoint.pth")
    }
    if not exports:
        raise RuntimeError(f"training wrote no teacher export under {train_dir / 'eval'}")
    return dict(sorted(exports.items()))


def _loss_summary(train_dir: Path) -> dict[str, float]:
    """First and last logged total loss (mean of the first / last 5 records of training_metrics.json)."""
    records = [json.loads(line) for line in (train_dir / "training_metrics.json").read_text().splitlines() if line]
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    if not losses:
        return {}
    return {"loss_first": float(np.mean(losses[:5])), "loss_last": float(np.mean(losses[-5:]))}


def write_report(output_dir: Path, report: dict) -> str:
    lines = [
        "# Main job: DINOv2 pretraining on Fashion-MNIST, k-NN evaluation",
        "",
        f"- training config: `{report['config_file']}` ({report['iterations']} iterations, "
        f"{report['train_seconds'] / 60:.1f} min)",
        f"- k-NN: cosine, k={KNN_K}, T={KNN_T}, memory bank {report['bank_size']} training images, "
        f"{report['test_size']} test images",
    ]
    if "loss_first" in report:
        lines.append(f"- total loss: {report['loss_first']:.3f} (first records) -> {report['loss_last']:.3f} (last)")
    lines += [
        "",
        "| features | k-NN top-1 (%) |",
        "|---|---|",
        f"| raw pixels (mean-subtracted) | {report['knn_raw_pixels']:.2f} |",
        f"| random-init backbone | {report['knn_random_init']:.2f} |",
        *(
            f"| DINOv2 teacher after {iterations} iterations | {top1:.2f} |"
            for iterations, top1 in report["knn_by_iterations"].items()
        ),
        "",
    ]
    text = "\n".join(lines)
    (output_dir / "report.md").write_text(text)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s main_job: %(message)s")
    output_dir = Path(args.output_dir).resolve()
    data_dir = Path(args.data_dir).resolve() if args.data_dir else output_dir / "data"
    config_file = (REPO / args.config_file).resolve() if not Path(args.config_file).is_absolute() else args.config_file
    if not Path(config_file).is_file():
        raise FileNotFoundError(f"--config-file {args.config_file} does not exist")
    per_class = args.knn_train_per_class

    logger.info("step 1/5: Fashion-MNIST image trees in %s", data_dir)
    folders = fmnist.prepare(args.source, data_dir, train_subset_per_class=per_class if per_class > 0 else None)
    bank = folders[f"train_{per_class}pc"] if per_class > 0 else folders["train"]
    bank_size = per_class * len(fmnist.CLASS_NAMES) if per_class > 0 else 60000

    logger.info("step 2/5: k-NN baselines (raw pixels, random-init backbone)")
    knn_raw = raw_pixel_knn(args.source, per_class)
    logger.info("raw pixels: k-NN top-1 %.2f %%", knn_raw)
    knn_random, _ = model_knn(config_file, "random", bank, folders["test"], output_dir / "knn_random_init")

    logger.info("step 3/5: DINOv2 pretraining")
    train_dir = output_dir / "train"
    train_command = [
        sys.executable,
        "dinov2/train/train.py",
        f"--config-file={config_file}",
        f"--output-dir={train_dir}",
        f"train.dataset_path=ImageFolder:root={folders['train']}",
        *args.opts,
    ]
    train_seconds = _add_train_seconds(train_dir, _run(train_command, str(train_dir), train_dir))

    logger.info("step 4/5: k-NN of the exported teachers")
    trained_config = train_dir / "config.yaml"
    knn_by_iterations = {
        iterations: model_knn(trained_config, str(teacher), bank, folders["test"], teacher.parent / "knn")[0]
        for iterations, teacher in _teacher_exports(train_dir).items()
    }
    iterations = max(knn_by_iterations)

    logger.info("step 5/5: report")
    report = {
        "config_file": str(
            Path(config_file).relative_to(REPO) if Path(config_file).is_relative_to(REPO) else config_file
        ),
        "overrides": args.opts,
        "iterations": iterations,
        "train_seconds": train_seconds,
        "bank_size": bank_size,
        "test_size": int(fmnist.load_split(args.source, "test")[1].size),
        "knn_raw_pixels": knn_raw,
        "knn_random_init": knn_random,
        "knn_pretrained": knn_by_iterations[iterations],
        "knn_by_iterations": knn_by_iterations,
        **_loss_summary(train_dir),
    }
    print(write_report(output_dir, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
