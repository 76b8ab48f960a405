"""Logistic regression on frozen CLS features, with a sweep of the regularisation strength C.

The model is cuML's L-BFGS ``LogisticRegression`` (multinomial, L2 penalty on the weights, unpenalised bias,
``C`` = inverse regularisation strength on the summed loss, as in cuML and scikit-learn), fitted with
``torch.optim.LBFGS`` on any device, so no GPU-only NVIDIA wheels are needed; float64 on CPU by default. The C
sweep is spread over ranks; only the selection accuracies are exchanged (an all-reduce).

    python -m dinov2.eval.log_regression --config-file CFG --pretrained-weights CKPT --output-dir DIR \\
        --train-dataset ImageFolder:root=... --val-dataset ImageFolder:root=...
"""

import argparse
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dinov2 import distributed
from dinov2.errors import ConfigError
from dinov2.eval.metrics import MetricType, build_metric
from dinov2.eval.setup import eval_transform_from_args, run_eval
from dinov2.eval.setup import get_args_parser as get_setup_args_parser
from dinov2.eval.utils import (
    align_to_train_classes,
    append_results,
    autocast_context,
    evaluate,
    extract_features,
    get_model_device,
)
from dinov2.utils.cli import run_cli
from dinov2.utils.dtype import as_torch_dtype

logger = logging.getLogger("dinov2")

__all__ = [
    "DEFAULT_MAX_ITER",
    "C_POWER_RANGE",
    "get_args_parser",
    "LogRegModule",
    "evaluate_model",
    "train_for_C",
    "train_and_evaluate",
    "sweep_C_values",
    "eval_log_regression",
    "eval_log_regression_with_model",
    "main",
]

DEFAULT_MAX_ITER = 1_000
C_POWER_RANGE = torch.linspace(-6, 5, 45)
_CPU_DEVICE = torch.device("cpu")


def get_args_parser(
    description: str | None = None,
    parents: list[argparse.ArgumentParser] | None = None,
    add_help: bool = True,
) -> argparse.ArgumentParser:
    setup_args_parser = get_setup_args_parser(parents=parents or [], add_help=False)
    parser = argparse.ArgumentParser(description=description, parents=[setup_args_parser], add_help=add_help)
    parser.add_argument("--train-dataset", dest="train_dataset_str", type=str, help="Training dataset")
    parser.add_argument("--val-dataset", dest="val_dataset_str", type=str, help="Validation dataset")
    parser.add_argument("--finetune-dataset-str", dest="finetune_dataset_str", type=str, help="Dataset to select C on")
    parser.add_argument("--finetune-on-val", action="store_true", help="Select C on the validation set")
    parser.add_argument("--metric-type", type=MetricType, choices=list(MetricType), help="Metric type")
    parser.add_argument("--train-features-device", type=str, help="Device to fit on (e.g. cpu, cuda)")
    parser.add_argument("--train-dtype", type=str, help="Fitting dtype (float64, float32)")
    parser.add_argument("--max-train-iters", type=int, help="Maximum number of L-BFGS iterations per fit")
    # The eval transform sizes and the loader batch size.
    parser.add_argument("--resize-size", type=int, help="Eval transform: shorter side resized to this")
    parser.add_argument("--crop-size", type=int, help="Eval transform: centre crop size (model input)")
    parser.add_argument("--batch-size", type=int, help="Feature extraction batch size (per rank)")
    parser.add_argument("--num-workers", type=int, help="Data loader workers for the feature extraction")
    parser.add_argument(
        "--c-power-range",
        nargs=3,
        type=float,
        metavar=("START", "STOP", "COUNT"),
        help="Sweep C = 10^p over COUNT evenly spaced p from START to STOP (the reference: -6 5 45)",
    )
    parser.set_defaults(
        train_dataset_str="ImageNet:split=TRAIN",
        val_dataset_str="ImageNet:split=VAL",
        finetune_dataset_str=None,
        metric_type=MetricType.MEAN_ACCURACY,
        train_features_device="cpu",
        train_dtype="float64",
        max_train_iters=DEFAULT_MAX_ITER,
        finetune_on_val=False,
        resize_size=224,
        crop_size=224,
        batch_size=256,
        num_workers=0,
        c_power_range=[-6.0, 5.0, 45],
    )
    return parser


class LogRegModule(nn.Module):
    """Multinomial L2 logistic regression fitted with L-BFGS; ``forward`` gives class probabilities for metrics.

    Minimises ``C * sum_i CE(W x_i + b, y_i) + ||W||^2 / 2`` (the cuML / scikit-learn objective), computed as its
    mean-scaled equivalent for conditioning. ``init`` warm-starts from another fitted module (the sweep fits
    increasing C values, whose optima move smoothly).
    """

    def __init__(
        self,
        C: float,
        max_iter: int = DEFAULT_MAX_ITER,
        dtype: torch.dtype = torch.float64,
        device: torch.device = _CPU_DEVICE,
    ) -> None:
        super().__init__()
        if C <= 0:
            raise ConfigError(f"C={C} must be > 0 (it is the inverse of the regularisation strength)")
        self.C = float(C)
        self.max_iter = max_iter
        self.dtype = dtype
        self.device = torch.device(device)
        self.weight: torch.Tensor | None = None  # [K, D]
        self.bias: torch.Tensor | None = None  # [K]
        self.n_iter = 0

    def fit(
        self,
        train_features: torch.Tensor,
        train_labels: torch.Tensor,
        *,
        num_classes: int | None = None,
        init: "LogRegModule | None" = None,
    ) -> "LogRegModule":
        with torch.inference_mode(False), torch.enable_grad():
            return self._fit(train_features, train_labels, num_classes=num_classes, init=init)

    def _fit(
        self,
        train_features: torch.Tensor,
        train_labels: torch.Tensor,
        *,
        num_classes: int | None,
        init: "LogRegModule | None",
    ) -> "LogRegModule":
        # Clones turn features extracted under inference_mode into tensors autograd may save.
        x = train_features.to(self.device, self.dtype).clone()  # [N, D]
        y = train_labels.to(self.device).long().view(-1).clone()  # [N]
        num_classes = int(y.max()) + 1 if num_classes is None else num_classes
        if init is not None and init.weight is not None and init.weight.shape == (num_classes, x.shape[1]):
            weight = init.weight.to(self.device, self.dtype).clone().requires_grad_(True)
            bias = init.bias.to(self.device, self.dtype).clone().requires_grad_(True)
        else:
            weight = torch.zeros(num_classes, x.shape[1], device=self.device, dtype=self.dtype, requires_grad=True)
            bias = torch.zeros(num_classes, device=self.device, dtype=self.dtype, requires_grad=True)
        penalty = 1.0 / (2.0 * self.C * x.shape[0])
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=self.max_iter,
            max_eval=self.max_iter * 2,
            tolerance_grad=1e-10,
            tolerance_change=1e-14,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight.T + bias, y) + penalty * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.n_iter = int(optimizer.state[weight].get("n_iter", 0))
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    def predict_proba(self, samples: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            raise RuntimeError("LogRegModule.fit() must be called before predicting")
        logits = samples.to(self.device, self.dtype) @ self.weight.T + self.bias  # [B, K]
        return torch.softmax(logits, dim=1)

    def forward(self, samples: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        probas = self.predict_proba(samples).to(targets.device)  # [B, K]
        return {"preds": probas, "target": targets}


def evaluate_model(
    *, logreg_model: LogRegModule, logreg_metric: nn.Module, test_data_loader: Iterable, device: torch.device
) -> dict[str, torch.Tensor]:
    """Metric values of ``logreg_model`` over a loader of ``(features, labels)``."""
    postprocessors = {"metrics": logreg_model}
    metrics = {"metrics": logreg_metric}
    _, eval_metrics = evaluate(nn.Identity(), test_data_loader, postprocessors, metrics, device)
    return eval_metrics["metrics"]


def train_for_C(
    *,
    C: float,
    max_iter: int,
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    dtype: torch.dtype = torch.float64,
    device: torch.device = _CPU_DEVICE,
    num_classes: int | None = None,
    init: LogRegModule | None = None,
) -> LogRegModule:
    logreg_model = LogRegModule(C, max_iter=max_iter, dtype=dtype, device=device)
    return logreg_model.fit(train_features, train_labels, num_classes=num_classes, init=init)


def train_and_evaluate(
    *,
    C: float,
    max_iter: int,
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    logreg_metric: nn.Module,
    test_data_loader: Iterable,
    train_dtype: torch.dtype = torch.float64,
    train_features_device: torch.device = _CPU_DEVICE,
    eval_device: torch.device = _CPU_DEVICE,
    num_classes: int | None = None,
) -> dict[str, torch.Tensor]:
    logreg_model = train_for_C(
        C=C,
        max_iter=max_iter,
        train_features=train_features,
        train_labels=train_labels,
        dtype=train_dtype,
        device=train_features_device,
        num_classes=num_classes,
    )
    return evaluate_model(
        logreg_model=logreg_model, logreg_metric=logreg_metric, test_data_loader=test_data_loader, device=eval_device
    )


def _selection_score(result: dict[str, torch.Tensor]) -> float:
    """Top-1 used to pick C; a per-class metric is averaged (mean per-class accuracy) into one number."""
    return float(result["top-1"].float().mean())


def sweep_C_values(
    *,
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_data_loader: Iterable,
    metric_type: MetricType,
    num_classes: int,
    train_dtype: torch.dtype = torch.float64,
    train_features_device: torch.device = _CPU_DEVICE,
    max_train_iters: int = DEFAULT_MAX_ITER,
    c_power_range: torch.Tensor = C_POWER_RANGE,
) -> dict[str, Any]:
    """Fits every ``C = 10^p`` (round-robin over ranks, increasing C, warm-started) and picks the best one.

    Returns ``{"best_C", "best_stats", "scores"}`` (``scores``: selection top-1 per C, identical on every rank).
    """
    if metric_type == MetricType.PER_CLASS_ACCURACY:
        # Selecting on a per-class vector makes no sense; select with mean per-class accuracy.
        metric_type = MetricType.MEAN_PER_CLASS_ACCURACY
    C_values = (10**c_power_range).tolist()
    rank, world_size = distributed.get_global_rank(), distributed.get_global_size()
    scores = torch.zeros(len(C_values), dtype=torch.float64)  # [n_C]
    previous = None
    start = time.perf_counter()
    for i in range(rank, len(C_values), world_size):
        C = C_values[i]
        logreg_model = train_for_C(
            C=C,
            max_iter=max_train_iters,
            train_features=train_features,
            train_labels=train_labels,
            dtype=train_dtype,
            device=train_features_device,
            num_classes=num_classes,
            init=previous,
        )
        # Each rank scores its own C values on the whole selection set: no cross-rank sum of counts.
        metric = build_metric(metric_type, num_classes=num_classes, sync_on_compute=False)
        result = evaluate_model(
            logreg_model=logreg_model, logreg_metric=metric, test_data_loader=test_data_loader, device=_CPU_DEVICE
        )
        scores[i] = _selection_score(result)
        previous = logreg_model
        logger.info(
            "C=%.3g: top-1 %.2f%% (%d L-BFGS iterations, %.0fs elapsed)",
            C,
            100.0 * scores[i],
            logreg_model.n_iter,
            time.perf_counter() - start,
        )
    scores = distributed.all_reduce(scores.to(distributed.get_collective_device())).cpu()
    best = int(torch.argmax(scores))
    best_C = C_values[best]
    logger.info("Best C: %.3g (selection top-1 %.2f%%)", best_C, 100.0 * scores[best])
    return {"best_C": best_C, "best_stats": float(scores[best]), "scores": scores.tolist()}


def _features_loader(features: torch.Tensor, labels: torch.Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(features, labels), batch_size=batch_size, drop_last=False, num_workers=0)


def _fit_and_selection_sets(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    finetune_features: torch.Tensor | None,
    finetune_labels: torch.Tensor | None,
    finetune_on_val: bool,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``(fit, selection)`` features and labels for the C sweep: all of train and the finetune set when there is
    one; all of train and val with ``finetune_on_val``; else 90 % / 10 % of train (a fixed random split)."""
    if finetune_features is not None:
        return train, (finetune_features.float(), finetune_labels)
    if finetune_on_val:
        return train, val
    features, labels = train
    permutation = torch.randperm(len(features), generator=torch.Generator().manual_seed(0)).to(features.device)
    split = max(1, len(features) // 10)
    select_idx, fit_idx = permutation[:split], permutation[split:]
    return (features[fit_idx], labels[fit_idx]), (features[select_idx], labels[select_idx])


def _extract(
    model: nn.Module, dataset: Dataset | None, name: str, batch_size: int, num_workers: int, gather_on_cpu: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Float32 features and labels of ``dataset`` (None, None without one)."""
    if dataset is None:
        return None, None
    logger.info("Extracting features for the %s set", name)
    features, labels = extract_features(model, dataset, batch_size, num_workers, gather_on_cpu)
    return features.float(), labels


def eval_log_regression(
    *,
    model: nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset,
    finetune_dataset: Dataset | None,
    metric_type: MetricType,
    batch_size: int,
    num_workers: int,
    finetune_on_val: bool = False,
    train_dtype: torch.dtype = torch.float64,
    train_features_device: torch.device = _CPU_DEVICE,
    max_train_iters: int = DEFAULT_MAX_ITER,
    c_power_range: torch.Tensor = C_POWER_RANGE,
) -> dict[str, float]:
    """Sweeps C on a selection set, refits the best C and returns ``{"top-1", "top-5" (%), "best_C"}``.

    Selection set: ``finetune_dataset`` if given, else the validation set with ``finetune_on_val``, else a random
    10% of the training set (seed 0), the rest being used for fitting; the final fit then uses all of train.
    """
    train_features_device = torch.device(train_features_device)
    (train_features, train_labels), (val_features, val_labels), (finetune_features, finetune_labels) = [
        _extract(model, dataset, name, batch_size, num_workers, gather_on_cpu=train_features_device.type == "cpu")
        for dataset, name in ((train_dataset, "train"), (val_dataset, "val"), (finetune_dataset, "finetune"))
    ]
    num_classes = int(train_labels.max()) + 1
    (fit_features, fit_labels), (select_features, select_labels) = _fit_and_selection_sets(
        (train_features, train_labels), (val_features, val_labels), finetune_features, finetune_labels, finetune_on_val
    )
    solver = {"num_classes": num_classes, "train_dtype": train_dtype, "train_features_device": train_features_device}
    sweep = sweep_C_values(
        train_features=fit_features,
        train_labels=fit_labels,
        test_data_loader=_features_loader(select_features, select_labels, batch_size),
        metric_type=metric_type,
        max_train_iters=max_train_iters,
        c_power_range=c_power_range,
        **solver,
    )
    best_C = sweep["best_C"]

    if not finetune_on_val and finetune_dataset is None:
        # Refit on the whole training set (train part + selection part).
        fit_features, fit_labels = train_features, train_labels
    logger.info("Refitting C=%.3g on %d samples", best_C, len(fit_features))
    final_metric = build_metric(metric_type, num_classes=num_classes, sync_on_compute=False)
    results = train_and_evaluate(
        C=best_C,
        max_iter=max_train_iters,
        train_features=fit_features,
        train_labels=fit_labels,
        logreg_metric=final_metric,
        test_data_loader=_features_loader(val_features, val_labels, batch_size),
        **solver,
    )
    top1 = results["top-1"]
    top5 = results.get("top-5")
    return {
        "top-1": 100.0 * float(top1.float().mean()),
        "top-5": 100.0 * float(top5.float().mean()) if top5 is not None else 0.0,
        "best_C": best_C,
    }


def eval_log_regression_with_model(
    model: nn.Module,
    train_dataset_str: str = "ImageNet:split=TRAIN",
    val_dataset_str: str = "ImageNet:split=VAL",
    *,
    finetune_dataset_str: str | None = None,
    autocast_dtype: torch.dtype = torch.float,
    finetune_on_val: bool = False,
    metric_type: MetricType = MetricType.MEAN_ACCURACY,
    train_dtype: torch.dtype = torch.float64,
    train_features_device: torch.device | str = _CPU_DEVICE,
    max_train_iters: int = DEFAULT_MAX_ITER,
    transform=None,
    batch_size: int = 256,
    num_workers: int = 0,
    c_power_range: torch.Tensor = C_POWER_RANGE,
    output_dir: str = "",
) -> dict[str, float]:
    """Log-reg evaluation from dataset strings with a built model; also writes ``results_eval_log_regression.json``.

    Features are the raw model output (final-norm CLS token, not L2-normalised).
    """
    from dinov2.data import make_dataset
    from dinov2.data.transforms import make_classification_eval_transform

    if transform is None:
        transform = make_classification_eval_transform(resize_size=224)
    train_dataset = make_dataset(dataset_str=train_dataset_str, transform=transform)
    val_dataset = align_to_train_classes(make_dataset(dataset_str=val_dataset_str, transform=transform), train_dataset)
    finetune_dataset = (
        align_to_train_classes(
            make_dataset(dataset_str=finetune_dataset_str, transform=transform), train_dataset, "the finetune set"
        )
        if finetune_dataset_str
        else None
    )
    with autocast_context(get_model_device(model), autocast_dtype):
        results_dict = eval_log_regression(
            model=model,
            train_dataset=train_dataset,
            val_dataset=val_dataset,
            finetune_dataset=finetune_dataset,
            metric_type=metric_type,
            batch_size=batch_size,
            num_workers=num_workers,
            finetune_on_val=finetune_on_val,
            train_dtype=train_dtype,
            train_features_device=torch.device(train_features_device),
            max_train_iters=max_train_iters,
            c_power_range=c_power_range,
        )
    logger.info(
        "Training of the supervised logistic regression on frozen features completed.\n"
        "Top-1 test accuracy: %.1f\nTop-5 test accuracy: %.1f\nobtained for C = %.3g",
        results_dict["top-1"],
        results_dict["top-5"],
        results_dict["best_C"],
    )
    if output_dir:
        append_results(os.path.join(output_dir, "results_eval_log_regression.json"), [results_dict])
    distributed.barrier()
    return results_dict


def main(args: argparse.Namespace) -> int:
    return run_eval(
        args,
        eval_log_regression_with_model,
        finetune_dataset_str=args.finetune_dataset_str,
        finetune_on_val=args.finetune_on_val,
        metric_type=args.metric_type,
        train_dtype=as_torch_dtype(args.train_dtype),
        train_features_device=torch.device(args.train_features_device),
        max_train_iters=args.max_train_iters,
        transform=eval_transform_from_args(args),
        num_workers=args.num_workers,
        c_power_range=_c_power_range(*args.c_power_range),
    )


def _c_power_range(start: float, stop: float, count: float) -> torch.Tensor:
    if count != int(count) or count < 1 or start > stop:
        raise ConfigError(f"--c-power-range {start} {stop} {count}: need START <= STOP and a whole COUNT >= 1")
    return torch.linspace(start, stop, int(count))


if __name__ == "__main__":
    run_cli(main, get_args_parser(description="DINOv2 logistic regression evaluation"))
