"""Classification metrics for the evaluations, in plain torch.

The names, enums and result keys (``"top-1"``, ``"top-5"``) are kept as in the official DINOv2 evals so that
result files and callers match; the counting is done here so the package needs no torchmetrics. Counts are summed
across ranks through ``dinov2.distributed`` when ``compute()`` is called, so every rank gets the global figure.
"""

import logging
from enum import Enum

import torch
from torch import nn

from dinov2 import distributed

logger = logging.getLogger("dinov2")

__all__ = [
    "MetricType",
    "AccuracyAveraging",
    "Metric",
    "MetricCollection",
    "TopKAccuracy",
    "ImageNetReaLAccuracy",
    "build_metric",
    "build_topk_accuracy_metric",
    "build_topk_imagenet_real_accuracy_metric",
]


class MetricType(Enum):
    MEAN_ACCURACY = "mean_accuracy"
    MEAN_PER_CLASS_ACCURACY = "mean_per_class_accuracy"
    PER_CLASS_ACCURACY = "per_class_accuracy"
    IMAGENET_REAL_ACCURACY = "imagenet_real_accuracy"

    @property
    def accuracy_averaging(self) -> "AccuracyAveraging | None":
        return getattr(AccuracyAveraging, self.name, None)

    def __str__(self) -> str:
        return self.value


class AccuracyAveraging(Enum):
    MEAN_ACCURACY = "micro"
    MEAN_PER_CLASS_ACCURACY = "macro"
    PER_CLASS_ACCURACY = "none"

    def __str__(self) -> str:
        return self.value


class Metric(nn.Module):
    """Minimal stateful metric: ``update`` accumulates sums in buffers, ``compute`` reduces them over ranks.

    Buffers follow ``.to(device)``, which is how ``evaluate`` moves metrics next to the model outputs.
    ``sync_on_compute=False`` keeps the figure of this rank's data only (when every rank saw the whole set).
    """

    sync_on_compute: bool = True

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement update()")

    def compute(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement compute()")

    def reset(self) -> None:
        for buffer in self.buffers():
            buffer.zero_()

    def _reduced(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over all ranks (a copy, so compute() can be called twice without double counting)."""
        if not self.sync_on_compute or not distributed.is_enabled():
            return tensor.clone()
        collective = tensor.to(distributed.get_collective_device(), copy=True)
        return distributed.all_reduce(collective).to(tensor.device)


class TopKAccuracy(Metric):
    """Top-k accuracy of ``preds [B, C]`` (scores) against integer ``target [B]``.

    average: ``micro`` = fraction of samples whose target is among the top-k scores; ``macro`` = mean over the
    classes present in the targets of that fraction per class; ``none`` = the per-class vector ``[C]``.
    ``top_k`` larger than ``num_classes`` is clipped to ``num_classes``, so top-5 works with fewer classes.
    """

    def __init__(
        self, *, num_classes: int, top_k: int = 1, average: str = "micro", sync_on_compute: bool = True
    ) -> None:
        super().__init__()
        self.sync_on_compute = sync_on_compute
        if average not in ("micro", "macro", "none"):
            raise ValueError(f"average={average!r} is not supported; use 'micro', 'macro' or 'none'")
        if num_classes < 1 or top_k < 1:
            raise ValueError(f"num_classes ({num_classes}) and top_k ({top_k}) must be >= 1")
        self.num_classes = num_classes
        self.top_k = min(top_k, num_classes)
        self.average = average
        self.register_buffer("correct", torch.zeros(num_classes, dtype=torch.float64))  # [C]
        self.register_buffer("support", torch.zeros(num_classes, dtype=torch.float64))  # [C]

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.ndim != 2 or preds.shape[1] != self.num_classes:
            raise ValueError(f"preds must be [B, {self.num_classes}] scores, got shape {tuple(preds.shape)}")
        target = target.to(self.correct.device).long().view(-1)  # [B]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(
                f"targets must lie in [0, {self.num_classes}), got [{int(target.min())}, {int(target.max())}]; "
                "does the evaluation set have classes the training set lacks?"
            )
        topk = preds.to(self.correct.device).topk(self.top_k, dim=1).indices  # [B, k]
        hit = (topk == target[:, None]).any(dim=1).to(self.correct.dtype)  # [B]
        self.correct.index_add_(0, target, hit)
        self.support.index_add_(0, target, torch.ones_like(hit))

    def compute(self) -> torch.Tensor:
        correct, support = self._reduced(self.correct), self._reduced(self.support)
        if self.average == "micro":
            return (correct.sum() / support.sum().clamp_min(1)).float()
        per_class = (correct / support.clamp_min(1)).float()  # [C]
        if self.average == "none":
            return per_class
        present = support > 0
        return per_class[present].mean() if present.any() else per_class.new_zeros(())


class ImageNetReaLAccuracy(Metric):
    """Top-k accuracy against multi-label targets ``[B, A]`` padded with -1 (the ImageNet-ReaL labels).

    A sample counts as a hit when any of its top-k predictions is among its labels; samples with no valid label
    are ignored, since no prediction can hit them.
    """

    def __init__(self, *, num_classes: int, top_k: int = 1, sync_on_compute: bool = True) -> None:
        super().__init__()
        self.sync_on_compute = sync_on_compute
        self.num_classes = num_classes
        self.top_k = min(top_k, num_classes)
        self.register_buffer("hits", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        target = target.to(self.hits.device).long()
        if target.ndim == 1:
            target = target[:, None]  # [B, 1]
        topk = preds.to(self.hits.device).topk(self.top_k, dim=1).indices  # [B, k]
        valid = target >= 0  # [B, A]
        match = (topk[:, :, None] == target[:, None, :]) & valid[:, None, :]  # [B, k, A]
        has_label = valid.any(dim=1)  # [B]
        self.hits += match.flatten(1).any(dim=1)[has_label].sum()
        self.count += has_label.sum()

    def compute(self) -> torch.Tensor:
        hits, count = self._reduced(self.hits), self._reduced(self.count)
        return (hits / count.clamp_min(1)).float()


class MetricCollection(nn.Module):
    """Named metrics updated together (``update(preds=..., target=...)``); ``compute`` returns ``{name: value}``."""

    def __init__(self, metrics: dict[str, Metric]) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict(metrics)

    def __getitem__(self, name: str) -> Metric:
        return self.metrics[name]

    def keys(self):
        return self.metrics.keys()

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        for metric in self.metrics.values():
            metric.update(preds, target)

    def compute(self) -> dict[str, torch.Tensor]:
        return {name: metric.compute() for name, metric in self.metrics.items()}

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()


def build_metric(
    metric_type: MetricType,
    *,
    num_classes: int,
    ks: tuple[int, ...] | None = None,
    sync_on_compute: bool = True,
) -> MetricCollection:
    ks = (1, 5) if ks is None else ks
    if metric_type.accuracy_averaging is not None:
        return build_topk_accuracy_metric(
            average_type=metric_type.accuracy_averaging,
            num_classes=num_classes,
            ks=ks,
            sync_on_compute=sync_on_compute,
        )
    if metric_type == MetricType.IMAGENET_REAL_ACCURACY:
        return build_topk_imagenet_real_accuracy_metric(num_classes=num_classes, ks=ks, sync_on_compute=sync_on_compute)
    raise ValueError(f"unknown metric type {metric_type!r}; expected one of {[str(m) for m in MetricType]}")


def build_topk_accuracy_metric(
    average_type: AccuracyAveraging,
    num_classes: int,
    ks: tuple[int, ...] = (1, 5),
    *,
    sync_on_compute: bool = True,
) -> MetricCollection:
    metrics = {
        f"top-{k}": TopKAccuracy(
            num_classes=num_classes, top_k=k, average=average_type.value, sync_on_compute=sync_on_compute
        )
        for k in ks
    }
    return MetricCollection(metrics)


def build_topk_imagenet_real_accuracy_metric(
    num_classes: int, ks: tuple[int, ...] = (1, 5), *, sync_on_compute: bool = True
) -> MetricCollection:
    metrics = {
        f"top-{k}": ImageNetReaLAccuracy(num_classes=num_classes, top_k=k, sync_on_compute=sync_on_compute) for k in ks
    }
    return MetricCollection(metrics)
