"""The main job: DINOv2 pretraining on a labelled image folder (default: Fashion-MNIST), evaluated with the project's
own k-NN and logistic-regression CLIs against raw pixels and a randomly initialised backbone, with a report.

    python scripts/main_job.py [--dataset-dir DIR] [--budget-minutes 20] [--output-dir OUT] [key=value ...]

``DIR/train/<class>/`` and ``DIR/val/<class>/`` hold images of any size, format and channel count; an optional
``DIR/unlabeled/`` (any layout) joins the pretraining images. Labels are used by the evaluations only. Without
``--dataset-dir`` the Fashion-MNIST idx files (``--source``) are written as such a folder first.

Stages, each in ``OUT/stages/<stage>-<key>/`` where the key hashes the stage's inputs (data, config, overrides,
budget) and the code of the ``dinov2`` package: a re-run reuses finished stages, resumes an interrupted training,
and recomputes a stage whose inputs changed (the previous one stays on disk, so switching back reuses it).

1. data: the image lists (pretraining images; a k-NN/log-reg bank of ``--knn-train-per-class`` images per class);
2. pretraining: ``dinov2/train/train.py`` with ``--config-file`` (default ``train/small_data``: the recipe scaled
   to the data, ``recipe.budget_minutes`` from ``--budget-minutes``) and online k-NN on the bank;
3. evaluation: ``dinov2/eval/knn.py`` and ``dinov2/eval/log_regression.py`` on raw pixels, the random
   initialisation (same effective config) and the pretrained teacher;
4. report: ``OUT/report.md`` / ``report.json`` and pictures (losses, collapse monitor, online k-NN, PCA of patch
   features and attention maps of a few val images).
"""

import argparse
import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

import prepare_fashion_mnist as fmnist  # noqa: E402

logger = logging.getLogger("dinov2")

DEFAULT_CONFIG = "train/small_data"
KNN_K = 20
KNN_T = 0.07
# Logistic regression: the reference's C sweep, coarser (9 values, a decade apart) and with fewer L-BFGS steps, so
# the three fits of the report take minutes on a CPU.
LOGREG_FLAGS = ("--c-power-range", "-4", "4", "9", "--max-train-iters", "200", "--train-dtype", "float32")
_PICTURE_IMAGES = 4


# -- arguments ------------------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-dir", default=None, help="DIR with train/<class>/, val/<class>/ [, unlabeled/]")
    parser.add_argument("--output-dir", default=None, help="Everything goes here (default runs/<dataset name>)")
    parser.add_argument("--source", default=fmnist.DEFAULT_SOURCE, help="Fashion-MNIST idx files (no --dataset-dir)")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="Training config (file or packaged name)")
    parser.add_argument(
        "--budget-minutes", type=float, default=20.0, help="Training time; the iterations follow the measured speed"
    )
    parser.add_argument(
        "--knn-train-per-class",
        type=int,
        default=1000,
        help="k-NN / log-reg bank: the first n training images of each class (-1: all)",
    )
    parser.add_argument("--knn-max-val", type=int, default=-1, help="Evaluate on at most this many val images")
    parser.add_argument("opts", nargs="*", default=[], help="Training config overrides, key=value")
    return parser


def code_version(root: Path = REPO) -> str:
    """Hash of the sources and configs of the ``dinov2`` package under ``root``: a stage made by other code (an
    update, a local edit) is recomputed instead of reused."""
    digest = hashlib.sha256()
    for path in sorted((root / "dinov2").rglob("*")):
        if path.suffix in (".py", ".yaml") and path.is_file():
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


@functools.cache
def _code() -> str:
    return code_version()


def _key(*parts: Any) -> str:
    """A stage's folder key: its inputs and the code version."""
    return hashlib.sha256(json.dumps([_code(), *parts], sort_keys=True, default=str).encode()).hexdigest()[:10]


# -- stage 1: data --------------------------------------------------------------------------------------------------


def _image_folder(root: Path) -> Any:
    from dinov2.data.datasets import ImageFolder

    return ImageFolder(root=str(root), labels="folder")


def _fingerprint(*folders: Path) -> list[Any]:
    """Cheap identity of image folders: per folder, the number of files and their total size."""
    result = []
    for folder in folders:
        sizes = [entry.stat().st_size for entry in folder.rglob("*") if entry.is_file()] if folder.is_dir() else []
        result.append([str(folder), len(sizes), sum(sizes)])
    return result


def _check_dataset_dir(dataset_dir: Path) -> list[str]:
    """The class names, after checking the layout; a clear error for anything a user can get wrong."""
    for split in ("train", "val"):
        if not (dataset_dir / split).is_dir():
            raise SystemExit(f"--dataset-dir {dataset_dir}: no {split}/ folder (expected {split}/<class>/<images>)")
    train, val = _image_folder(dataset_dir / "train"), _image_folder(dataset_dir / "val")
    if list(train.classes) != list(val.classes):
        missing, extra = sorted(set(train.classes) - set(val.classes)), sorted(set(val.classes) - set(train.classes))
        raise SystemExit(
            f"--dataset-dir {dataset_dir}: train/ and val/ must hold the same class folders "
            f"(only in train: {missing[:10]}, only in val: {extra[:10]})"
        )
    if len(train.classes) < 2:
        raise SystemExit(f"--dataset-dir {dataset_dir}: train/ needs at least 2 class folders")
    return list(train.classes)


def _write_list(path: Path, rows: list[tuple[str, int | None]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{p}\t{label}\n" if label is not None else f"{p}\n" for p, label in rows))
    os.replace(tmp, path)
    return f"FileList:path={path}"


def prepare_data(args: argparse.Namespace, output_dir: Path) -> dict[str, Any]:
    """``{"name", "classes", "pretrain", "bank", "val", "bank_size", "val_size", "key"}``: dataset strings of the
    pretraining images (train [+ unlabeled], labels unused), the evaluation bank and the val images."""
    if args.dataset_dir is None:
        dataset_dir = output_dir / "data"
        fmnist.prepare(args.source, dataset_dir)
        name, fingerprint = "fashion_mnist", _fingerprint(Path(args.source))
    else:
        dataset_dir = Path(args.dataset_dir).resolve()
        name, fingerprint = dataset_dir.name, _fingerprint(*(dataset_dir / s for s in ("train", "val", "unlabeled")))
    classes = _check_dataset_dir(dataset_dir)
    key = _key(fingerprint, args.knn_train_per_class, args.knn_max_val)
    lists = output_dir / "stages" / f"data-{key}"
    train, val = _image_folder(dataset_dir / "train"), _image_folder(dataset_dir / "val")
    rows = [(train.get_image_path(i), int(train.get_target(i))) for i in range(len(train))]
    bank = _first_per_class(rows, args.knn_train_per_class)
    val_rows = [(val.get_image_path(i), int(val.get_target(i))) for i in range(len(val))]
    if args.knn_max_val > 0:
        val_rows = val_rows[:: max(1, len(val_rows) // args.knn_max_val)][: args.knn_max_val]
    pretrain = f"ImageFolder:root={dataset_dir / 'train'}"
    unlabeled = dataset_dir / "unlabeled"
    if unlabeled.is_dir():
        from dinov2.data.datasets import ImageFolder

        extra = ImageFolder(root=str(unlabeled), labels="none")
        paths = [(p, None) for p, _ in rows] + [(extra.get_image_path(i), None) for i in range(len(extra))]
        pretrain = _write_list(lists / "pretrain.txt", paths)
    return {
        "name": name,
        "classes": classes,
        "pretrain": pretrain,
        "bank": _write_list(lists / "bank.txt", bank),
        "val": _write_list(lists / "val.txt", val_rows),
        "bank_size": len(bank),
        "val_size": len(val_rows),
        "train_size": len(rows) + (len(extra) if unlabeled.is_dir() else 0),
        "key": key,
    }


def _first_per_class(rows: list[tuple[str, int]], per_class: int) -> list[tuple[str, int]]:
    """The first ``per_class`` rows of each label, in order (all rows when ``per_class`` < 0)."""
    if per_class < 0:
        return rows
    counts: Counter[int] = Counter()
    kept = []
    for path, label in rows:
        if counts[label] < per_class:
            counts[label] += 1
            kept.append((path, label))
    return kept


# -- running the project's CLIs -------------------------------------------------------------------------------------


def _run(command: list[str], log_file: Path, *, echo: bool = False) -> float:
    """Runs ``command`` from the repository root; its output goes to ``log_file`` (and to the console with
    ``echo``). Returns the seconds it took."""
    logger.info("running: %s", " ".join(command))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    # Idle OpenMP threads spin briefly, then sleep (GNU OpenMP, PyTorch's on Linux): sleeping at once
    # (OMP_WAIT_POLICY=PASSIVE) made a step of the small-data recipe 1.6x slower, spinning for long keeps the cores
    # from the data-loader worker (2-core VM, iteration time: 0.297 s passive, 0.248 s default, 0.235 s with this).
    env.setdefault("GOMP_SPINCOUNT", "20000")
    start = time.monotonic()
    with log_file.open("a") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in process.stdout:
            log.write(line)
            if echo:
                print(line, end="", flush=True)
        result = process.wait()
    if result != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-15:])
        raise SystemExit(f"step failed (exit code {result}): {' '.join(command)}\n{tail}\nlog: {log_file}")
    return time.monotonic() - start


def _stage_done(folder: Path) -> dict[str, Any] | None:
    marker = folder / "stage.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def _mark_done(folder: Path, record: dict[str, Any]) -> dict[str, Any]:
    (folder / "stage.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# -- stage 2: pretraining -------------------------------------------------------------------------------------------


def pretrain(args: argparse.Namespace, data: dict[str, Any], output_dir: Path) -> Path:
    """Trains (or resumes, or reuses) the run whose inputs are the data, the config file, the overrides and the
    budget; returns its folder."""
    config_text = _config_text(args.config_file)
    folder = output_dir / "stages" / f"pretrain-{_key(data['key'], config_text, args.opts, args.budget_minutes)}"
    if _stage_done(folder):
        logger.info("pretraining: reusing %s", folder)
        return folder
    command = [
        sys.executable,
        "dinov2/train/train.py",
        f"--config-file={args.config_file}",
        f"--output-dir={folder}",
        f"train.dataset_path={data['pretrain']}",
        f"recipe.budget_minutes={args.budget_minutes}",
        f"evaluation.online_knn.train_dataset={data['bank']}",
        f"evaluation.online_knn.val_dataset={data['val']}",
        *args.opts,
    ]
    logger.info("pretraining: %s (progress in %s)", folder, folder / "logs" / "log.txt")
    seconds = _run(command, folder / "main_job_train.log", echo=True)
    seconds_file = folder / "main_job_train_seconds.json"
    total = json.loads(seconds_file.read_text())["seconds"] + seconds if seconds_file.is_file() else seconds
    seconds_file.write_text(json.dumps({"seconds": total}) + "\n")
    _mark_done(folder, {"train_seconds": total})
    return folder


def _config_text(config_file: str) -> str:
    from dinov2.utils.config import resolve_config_file

    return resolve_config_file(config_file).read_text()


def _teacher_exports(train_dir: Path) -> dict[int, Path]:
    """``{iterations trained: teacher_checkpoint.pth}`` of every export, in training order."""
    exports = {
        int(path.parent.name.removeprefix("training_")) + 1: path
        for path in (train_dir / "eval").glob("training_*/teacher_checkpoint.pth")
    }
    if not exports:
        raise SystemExit(f"training wrote no teacher export under {train_dir / 'eval'}")
    return dict(sorted(exports.items()))


# -- stage 3: evaluation --------------------------------------------------------------------------------------------


def evaluate(kind: str, weights: str, train_dir: Path, data: dict[str, Any], output_dir: Path) -> float:
    """Top-1 (%) of ``kind`` ("knn" or "logreg") for ``weights`` (a teacher export, "random" or "raw-pixels") with
    the run's effective config; cached by its inputs."""
    config = train_dir / "config.yaml"
    weights_id = weights if weights in ("random", "raw-pixels") else str(Path(weights).relative_to(output_dir))
    folder = output_dir / "stages" / f"{kind}-{_key(kind, weights_id, config.read_text(), data['key'])}"
    done = _stage_done(folder)
    if done:
        return done["top1"]
    from omegaconf import OmegaConf

    size = str(OmegaConf.load(config).crops.global_crops_size)
    workers = str(min(2, os.cpu_count() or 1))
    common = [
        f"--config-file={config}",
        f"--pretrained-weights={weights}",
        f"--output-dir={folder}",
        f"--train-dataset={data['bank']}",
        f"--val-dataset={data['val']}",
        f"--resize-size={size}",
        f"--crop-size={size}",
        "--batch-size=256",
        f"--num-workers={workers}",
    ]
    if kind == "knn":
        flags = [f"--nb_knn={KNN_K}", f"--temperature={KNN_T}", "--center-features"]
        seconds = _run([sys.executable, "dinov2/eval/knn.py", *common, *flags], folder / "main_job.log")
        top1 = _last_value(folder / "results_eval_knn.json", f"('full', {KNN_K}) Top 1")
    else:
        seconds = _run(
            [sys.executable, "dinov2/eval/log_regression.py", *common, *LOGREG_FLAGS], folder / "main_job.log"
        )
        top1 = _last_value(folder / "results_eval_log_regression.json", "top-1")
    logger.info("%s of %s: top-1 %.2f %% (%.0f s)", kind, weights_id, top1, seconds)
    return _mark_done(folder, {"top1": top1, "seconds": seconds, "weights": weights_id})["top1"]


def _last_value(results_file: Path, key: str) -> float:
    """The last ``key`` figure in a results file of JSON lines."""
    value = None
    for line in results_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and key in record:
            value = float(record[key])
    if value is None:
        raise SystemExit(f"no {key!r} figure in {results_file}")
    return value


# -- stage 4: report ------------------------------------------------------------------------------------------------


def _pictures(train_dir: Path, teacher: Path, data: dict[str, Any], output_dir: Path) -> list[str]:
    """Training curves and the feature pictures of a few val images (one per class, the first classes)."""
    from PIL import Image

    from dinov2.tools.training_curves import plot_run
    from dinov2.tools.visualize import load_backbone, visualize

    written = [path.name for path in plot_run(train_dir, output_dir)]
    val_rows = [line.split("\t") for line in Path(data["val"].removeprefix("FileList:path=")).read_text().splitlines()]
    chosen, seen = [], set()
    for path, label in val_rows:
        if label not in seen and len(chosen) < _PICTURE_IMAGES:
            seen.add(label)
            chosen.append(path)
    model = load_backbone(str(teacher))
    size = max(int(model.patch_embed.img_size[0]), 112)  # small images are upsampled so that the maps are legible
    rows = visualize(model, [Image.open(path) for path in chosen], size)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 4 for r in rows)), "white")
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height + 4
    sheet.save(output_dir / "features.png")
    return [*written, "features.png"]


def write_report(output_dir: Path, report: dict[str, Any]) -> str:
    r = report
    table = [
        "| features | k-NN top-1 (%) | log. regression top-1 (%) |",
        "|---|---|---|",
        f"| raw pixels | {r['knn_raw_pixels']:.2f} | {r['logreg_raw_pixels']:.2f} |",
        f"| random-init backbone | {r['knn_random_init']:.2f} | {r['logreg_random_init']:.2f} |",
        f"| DINOv2 teacher ({r['iterations']} iterations) | {r['knn_pretrained']:.2f} | {r['logreg_pretrained']:.2f} |",
    ]
    lines = [
        f"# Main job: DINOv2 pretraining on {r['dataset']}",
        "",
        f"- data: {r['train_size']} pretraining images, {r['num_classes']} classes; evaluation bank "
        f"{r['bank_size']} training images (the first {r['knn_train_per_class']} or fewer of each class), "
        f"{r['val_size']} val images",
        f"- training: `{r['config_file']}` {' '.join(r['overrides'])} -> {r['iterations']} iterations in "
        f"{r['train_seconds'] / 60:.1f} min (budget {r['budget_minutes']:g} min); run folder `{r['train_dir']}`",
        f"- k-NN: cosine on mean-centred features, k={KNN_K}, T={KNN_T}; logistic regression: L-BFGS, C swept over "
        "1e-4..1e4 on 10 % of the bank, refit on the whole bank",
        "",
        *table,
        "",
        "Online k-NN of the teacher during training (iterations: top-1 %): "
        + ", ".join(f"{it}: {top1:.1f}" for it, top1 in r["online_knn"].items()),
        "",
        *(f"![{name}]({name})" for name in r["pictures"]),
        "",
    ]
    text = "\n".join(lines)
    (output_dir / "report.md").write_text(text)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return "\n".join(table)


def _online_knn(train_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (train_dir / "training_metrics.json").read_text().splitlines() if line]
    return {r["iteration"] + 1: r["online_knn_top1"] for r in records if "online_knn_top1" in r}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s main_job: %(message)s")
    name = Path(args.dataset_dir).resolve().name if args.dataset_dir else "fashion_mnist"
    output_dir = Path(args.output_dir or REPO / "runs" / name).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)

    logger.info("step 1/4: data")
    data = prepare_data(args, output_dir)
    logger.info(
        "%s: %d pretraining images, bank %d, val %d", name, data["train_size"], data["bank_size"], data["val_size"]
    )

    logger.info("step 2/4: pretraining (budget %g min)", args.budget_minutes)
    train_dir = pretrain(args, data, output_dir)
    exports = _teacher_exports(train_dir)
    iterations, teacher = max(exports), exports[max(exports)]

    logger.info("step 3/4: evaluation (k-NN and logistic regression: raw pixels, random init, teacher)")
    results = {
        f"{kind}_{label}": evaluate(kind, weights, train_dir, data, output_dir)
        for label, weights in (("raw_pixels", "raw-pixels"), ("random_init", "random"), ("pretrained", str(teacher)))
        for kind in ("knn", "logreg")
    }

    logger.info("step 4/4: report")
    report = {
        "dataset": name,
        "num_classes": len(data["classes"]),
        "config_file": args.config_file,
        "overrides": args.opts,
        "budget_minutes": args.budget_minutes,
        "iterations": iterations,
        "train_seconds": _stage_done(train_dir)["train_seconds"],
        "train_dir": str(train_dir.relative_to(output_dir)),
        "teacher": str(teacher.relative_to(output_dir)),
        "knn_train_per_class": args.knn_train_per_class,
        **{key: data[key] for key in ("train_size", "bank_size", "val_size")},
        **results,
        "online_knn": _online_knn(train_dir),
        "pictures": _pictures(train_dir, teacher, data, output_dir),
    }
    print(write_report(output_dir, report))
    print(f"report: {output_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
