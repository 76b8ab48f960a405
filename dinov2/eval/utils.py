"""Shared pieces of the evaluations: feature wrappers, the evaluation loop and distributed feature extraction.

Everything runs in one plain process (CPU or one GPU) as well as under torchrun/SLURM: cross-rank traffic goes
through ``dinov2.distributed``, whose collectives do nothing without a process group.
"""

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dinov2 import distributed
from dinov2.errors import DataError
from dinov2.logging import FILE_ONLY
from dinov2.utils.signals import ignore_stop_signals

logger = logging.getLogger("dinov2")

__all__ = [
    "ModelWithNormalize",
    "align_to_train_classes",
    "RawPixels",
    "ModelWithIntermediateLayers",
    "DatasetWithIndex",
    "make_inference_data_loader",
    "evaluate",
    "all_gather_and_flatten",
    "extract_features",
    "extract_features_with_dataloader",
    "get_model_device",
    "autocast_context",
    "append_results",
]


class ModelWithNormalize(nn.Module):
    """The backbone's eval output (final-norm CLS token), L2-normalised so dot products are cosine similarities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model(samples), dim=1, p=2)  # [B, D]


class _Relabeled(Dataset):
    """``dataset`` with each target ``t`` replaced by ``mapping[t]``."""

    def __init__(self, dataset: Dataset, mapping: list[int]) -> None:
        self.dataset, self.mapping = dataset, mapping

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        sample, target = self.dataset[index]
        return sample, self.mapping[target] if isinstance(target, int) and target >= 0 else target


def align_to_train_classes(dataset: Dataset, train_dataset: Dataset, name: str = "the val set") -> Dataset:
    """``dataset`` labelled with the training set's class indices, matched by class name.

    Two class-folder datasets number their own sorted classes, so a val set lacking one training class would shift
    every later label and score against the wrong classes. Datasets without class names are returned as they are;
    a class the training set lacks is an error naming it.
    """
    train_classes, classes = getattr(train_dataset, "classes", None), getattr(dataset, "classes", None)
    if not train_classes or not classes or list(classes) == list(train_classes):
        return dataset
    index = {name_: i for i, name_ in enumerate(train_classes)}
    unknown = [class_ for class_ in classes if class_ not in index]
    if unknown:
        raise DataError(
            f"{name} has {len(unknown)} class(es) the training set lacks: {', '.join(map(str, unknown[:10]))}; "
            "evaluate on classes the training set has (same class folder names)"
        )
    logger.info("%s: %d of the %d training classes, labels matched by class name", name, len(classes), len(index))
    return _Relabeled(dataset, [index[class_] for class_ in classes])


class RawPixels(nn.Module):
    """The input itself as the feature, ``[B, C, H, W] -> [B, C*H*W]``: the baseline a pretrained backbone must
    beat (``--pretrained-weights raw-pixels``)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


class ModelWithIntermediateLayers(nn.Module):
    """Frozen backbone returning ``(patch_tokens [B, N, D], cls [B, D])`` for each of its last ``n_last_blocks``.

    Runs under ``inference_mode`` (the backbone is never trained by the linear probe) and ``autocast_ctx()``.
    """

    def __init__(
        self,
        feature_model: nn.Module,
        n_last_blocks: int,
        autocast_ctx: Callable[[], AbstractContextManager] = nullcontext,
    ) -> None:
        super().__init__()
        self.feature_model = feature_model
        self.feature_model.eval()
        self.n_last_blocks = n_last_blocks
        self.autocast_ctx = autocast_ctx

    def forward(self, images: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        with torch.inference_mode(), self.autocast_ctx():
            return self.feature_model.get_intermediate_layers(images, self.n_last_blocks, return_class_token=True)


class DatasetWithIndex(Dataset):
    """Yields ``(image, (index, target))`` so features gathered from any rank land at their dataset position."""

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> tuple[Any, tuple[int, Any]]:
        image, target = self._dataset[index]
        return image, (index, target)


def get_model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameterless module)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def autocast_context(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """``torch.autocast`` for ``device`` at ``dtype``; disabled for float32, which autocast does not accept on CPU."""
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)


def make_inference_data_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    collate_fn: Callable | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """Un-shuffled loader giving each rank its ``DistributedSampler`` share (the whole set in one process).

    Rank and world size come from ``dinov2.distributed``, so no process group is needed. The sampler pads the
    dataset to a multiple of the world size with repeated samples; gathering by index makes that harmless.
    """
    sampler = DistributedSampler(
        dataset,
        num_replicas=distributed.get_global_size(),
        rank=distributed.get_global_rank(),
        shuffle=False,
        drop_last=False,
    )
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
        collate_fn=collate_fn,
        worker_init_fn=ignore_stop_signals,
    )


class _Progress:
    """Logs ``header [i/n] eta`` every ``every`` steps so long extractions show they are alive."""

    def __init__(self, header: str, total: int | None, every: int = 10, console: bool = True) -> None:
        self.header, self.total, self.every = header, total, every
        self.extra = None if console else FILE_ONLY
        self.start = time.perf_counter()

    def step(self, i: int) -> None:
        done = i + 1
        if done % self.every and done != self.total:
            return
        elapsed = time.perf_counter() - self.start
        if self.total:
            eta = elapsed / done * (self.total - done)
            args = (self.header, done, self.total, elapsed, eta)
            logger.info("%s [%d/%d] elapsed %.0fs eta %.0fs", *args, extra=self.extra)
        else:
            logger.info("%s [%d] elapsed %.0fs", self.header, done, elapsed, extra=self.extra)


def _safe_len(iterable: Iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data_loader: Iterable,
    postprocessors: dict[str, nn.Module],
    metrics: dict[str, nn.Module],
    device: torch.device,
    criterion: nn.Module | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Runs ``model`` over ``data_loader`` and feeds ``metrics[k]`` with ``postprocessors[k](outputs, targets)``.

    Returns ``(averaged stats, {k: metrics[k].compute()})``; stats hold ``loss`` when a criterion is given. The
    metrics sum their counts over ranks in ``compute``.
    """
    model.eval()
    if criterion is not None:
        criterion.eval()
    for metric in metrics.values():
        metric.to(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    loss_count = torch.zeros((), dtype=torch.float64, device=device)
    progress = _Progress("Test:", _safe_len(data_loader))
    for i, (samples, targets, *_) in enumerate(data_loader):
        outputs = model(samples.to(device))
        targets = targets.to(device)
        if criterion is not None:
            loss_sum += criterion(outputs, targets).double() * targets.shape[0]
            loss_count += targets.shape[0]
        for key, metric in metrics.items():
            metric.update(**postprocessors[key](outputs, targets))
        progress.step(i)
    stats: dict[str, float] = {}
    if criterion is not None:
        total = distributed.all_reduce(torch.stack([loss_sum, loss_count]).to(distributed.get_collective_device()))
        stats["loss"] = float(total[0] / total[1].clamp_min(1))
    logger.info("Averaged stats: %s", stats)
    return stats, {key: metric.compute() for key, metric in metrics.items()}


def all_gather_and_flatten(tensor_rank: torch.Tensor) -> torch.Tensor:
    """``[n, ...]`` on each rank -> ``[W * n, ...]`` in rank order (identity in one process)."""
    if not distributed.is_enabled():
        return tensor_rank
    gathered = distributed.all_gather_tensor(tensor_rank.contiguous().to(distributed.get_collective_device()))
    return gathered.to(tensor_rank.device)


def extract_features(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    gather_on_cpu: bool = False,
    console: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[N, D]`` and labels ``[N]`` of the whole ``dataset``, in dataset order, on every rank.

    Each rank embeds its share; the shares are gathered by sample index. ``gather_on_cpu`` keeps the full matrix
    in host memory (for sets too large for the accelerator). ``console=False`` keeps the progress lines in the log
    file (an extraction inside training).
    """
    device = get_model_device(model)
    data_loader = make_inference_data_loader(
        DatasetWithIndex(dataset),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type != "cpu",
    )
    return extract_features_with_dataloader(model, data_loader, len(dataset), gather_on_cpu, console)


@torch.inference_mode()
def extract_features_with_dataloader(
    model: nn.Module,
    data_loader: Iterable,
    sample_count: int,
    gather_on_cpu: bool = False,
    console: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like ``extract_features`` for a loader yielding ``(samples, (index, target))``."""
    device = get_model_device(model)
    gather_device = torch.device("cpu") if gather_on_cpu else device
    features, all_labels = None, None
    progress = _Progress("Extracting features:", _safe_len(data_loader), console=console)
    for i, (samples, (index, labels_rank)) in enumerate(data_loader):
        features_rank = model(samples.to(device, non_blocking=True)).float()  # [B, D]
        labels_rank = torch.as_tensor(labels_rank).to(device)
        index = torch.as_tensor(index).to(device)
        if features is None:
            features = torch.zeros(sample_count, features_rank.shape[-1], device=gather_device)  # [N, D]
            all_labels = torch.full((sample_count, *labels_rank.shape[1:]), -1, dtype=torch.long, device=gather_device)
        index_all = all_gather_and_flatten(index).to(gather_device)
        features_all = all_gather_and_flatten(features_rank).to(gather_device)
        labels_all = all_gather_and_flatten(labels_rank.long()).to(gather_device)
        if len(index_all) > 0:
            features.index_copy_(0, index_all, features_all)
            all_labels.index_copy_(0, index_all, labels_all)
        progress.step(i)
    if features is None:
        raise DataError("the data loader yielded no batch; is the dataset empty?")
    extra = None if console else FILE_ONLY
    logger.info("Features shape: %s", tuple(features.shape), extra=extra)
    logger.info("Labels shape: %s", tuple(all_labels.shape), extra=extra)
    missing = int((all_labels.view(sample_count, -1) == -1).all(dim=1).sum())
    if missing:
        raise RuntimeError(f"{missing} of {sample_count} samples got no feature; sample_count may exceed the loader")
    return features, all_labels


def append_results(path: str, records: Iterable[Any], *, iteration: int | None = None) -> None:
    """Appends ``records`` as JSON lines to the results file ``path`` (main process only; nothing if ``path`` is "").

    The evals append, so reruns and periodic validations accumulate. With
    ``iteration`` the block is framed as in ``results_eval_linear.json``: ``iter: <it>`` first, a blank line last.
    """
    if not path or not distributed.is_main_process():
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        if iteration is not None:
            f.write(f"iter: {iteration}\n")
        for record in records:
            f.write(json.dumps(record) + "\n")
        if iteration is not None:
            f.write("\n")
