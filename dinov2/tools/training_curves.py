"""Plots of a training run from its ``training_metrics.json`` and ``config.yaml``.

    python -m dinov2.tools.training_curves OUT [--to DIR]

Writes ``losses.png`` (each loss term over iterations, with the value it takes when the teacher's targets are
uniform as a dashed line: a term on that line learns nothing), ``collapse.png`` (teacher feature spread and target
entropy, the collapse monitor's inputs) and, when the run measured it, ``online_knn.png``.
"""

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from dinov2.errors import MissingPathError
from dinov2.train.collapse_monitor import uniform_loss_values
from dinov2.utils.cli import run_cli

__all__ = ["main", "plot_run", "read_metrics"]

_LOSS_TERMS = ("dino_global_crops_loss", "dino_local_crops_loss", "ibot_loss", "koleo_loss")
_COLLAPSE_STATS = {
    "teacher_cls_std": "teacher CLS feature spread (0: image-independent)",
    "teacher_entropy": "teacher target entropy / log K (1: uniform)",
    "teacher_usage_entropy": "prototype usage entropy / log K (0: one-hot collapse)",
}


def read_metrics(run_dir: Path) -> list[dict]:
    """The JSON records of ``training_metrics.json`` (lines that are not JSON objects are skipped)."""
    path = Path(run_dir) / "training_metrics.json"
    if not path.is_file():
        raise MissingPathError(f"{path} does not exist: give a training output folder (--output-dir of a run)")
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "iteration" in record:
            records.append(record)
    return records


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["iteration"], r[key]) for r in records if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def plot_run(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Writes the pictures of the run in ``run_dir`` (into ``out_dir``, default ``run_dir``); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out_dir = Path(out_dir or run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = read_metrics(run_dir)
    uniform = uniform_loss_values(OmegaConf.load(run_dir / "config.yaml"))
    written = []

    terms = [term for term in _LOSS_TERMS if _series(records, term)[0]]
    fig, axes = plt.subplots(1, max(1, len(terms)), figsize=(4.2 * max(1, len(terms)), 3.4), squeeze=False)
    for ax, term in zip(axes[0], terms):
        ax.plot(*_series(records, term), lw=1.2, label=term)
        if term in uniform:
            ax.axhline(uniform[term], ls="--", color="gray", label=f"uniform targets ({uniform[term]:.3f})")
        ax.set_title(term, fontsize=10)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "losses.png"))

    stats = [key for key in _COLLAPSE_STATS if _series(records, key)[0]]
    if stats:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for key in stats:
            ax.plot(*_series(records, key), lw=1.2, label=_COLLAPSE_STATS[key])
        ax.set_xlabel("iteration")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
        ax.set_title("collapse monitor", fontsize=10)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "collapse.png"))

    iterations, top1 = _series(records, "online_knn_top1")
    if iterations:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.plot([i + 1 for i in iterations], top1, marker="o")
        ax.set_xlabel("iterations trained")
        ax.set_ylabel("k-NN top-1 (%)")
        ax.set_title("online k-NN of the teacher", fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "online_knn.png"))
    plt.close("all")
    return written


def _save(fig: object, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a training output folder (with training_metrics.json and config.yaml)")
    parser.add_argument("--to", default=None, help="where to write the PNGs (default: the run folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(get_args_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    for path in plot_run(Path(args.run_dir), Path(args.to) if args.to else None):
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(run, get_args_parser())
