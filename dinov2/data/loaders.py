"""Dataset strings (``Name:key=value:...``) and the data loader factory."""

import logging
from collections.abc import Callable
from enum import Enum
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dinov2.utils.signals import ignore_stop_signals

from .datasets import FileList, ImageFolder, ImageNet, ImageNet22k
from .samplers import EpochSampler, InfiniteSampler, ResumableDistributedSampler, ShardedInfiniteSampler

logger = logging.getLogger(__name__)

__all__ = ["SamplerType", "make_dataset", "make_data_loader"]


class SamplerType(Enum):
    DISTRIBUTED = 0
    EPOCH = 1
    INFINITE = 2
    SHARDED_INFINITE = 3
    SHARDED_INFINITE_NEW = 4


def _to_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean; use true or false")


def _to_split(value: str) -> ImageNet.Split:
    try:
        return ImageNet.Split[value.upper()]
    except KeyError:
        raise ValueError(f"split={value!r} is not one of {[s.name for s in ImageNet.Split]}") from None


def _to_labels(value: str) -> str:
    if value not in ("auto", "folder", "none"):
        raise ValueError(f"labels={value!r} is not one of auto, folder, none")
    return value


# name -> (class, {key: converter}, required keys). One table for every dataset string.
_DATASETS: dict[str, tuple[type, dict[str, Callable[[str], Any]], tuple[str, ...]]] = {
    "ImageNet": (
        ImageNet,
        {"split": _to_split, "root": str, "extra": str, "strict": _to_bool, "check_length": _to_bool},
        ("split", "root", "extra"),
    ),
    "ImageNet22k": (
        ImageNet22k,
        {"root": str, "extra": str, "strict": _to_bool, "mmap_cache_size": int},
        ("root", "extra"),
    ),
    "ImageFolder": (
        ImageFolder,
        {"root": str, "extra": str, "labels": _to_labels, "rescan": _to_bool, "strict": _to_bool},
        ("root",),
    ),
    "FileList": (FileList, {"path": str, "root": str, "strict": _to_bool}, ("path",)),
}


def _parse_dataset_str(dataset_str: str) -> tuple[type, dict[str, Any]]:
    """``"Name:key=value:key=value"`` -> (dataset class, constructor kwargs); values cannot contain ':' or '='."""
    if not isinstance(dataset_str, str) or not dataset_str.strip():
        raise ValueError(f"dataset string {dataset_str!r} is empty; e.g. ImageFolder:root=/path/to/images")
    name, *tokens = dataset_str.split(":")
    if name not in _DATASETS:
        raise ValueError(
            f'Unsupported dataset "{name}" in {dataset_str!r}; accepted names: {", ".join(_DATASETS)} '
            "(e.g. ImageFolder:root=/path/to/images)"
        )
    class_, converters, required = _DATASETS[name]
    kwargs: dict[str, Any] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key or "=" in value:
            raise ValueError(
                f"malformed part {token!r} in dataset string {dataset_str!r}: expected key=value "
                "(values cannot contain ':' or '=')"
            )
        if key not in converters:
            raise ValueError(f"unknown key {key!r} for dataset {name}; accepted keys: {', '.join(converters)}")
        if key in kwargs:
            raise ValueError(f"key {key!r} given twice in dataset string {dataset_str!r}")
        try:
            kwargs[key] = converters[key](value)
        except ValueError as e:
            raise ValueError(f"bad value for {key} in dataset string {dataset_str!r}: {e}") from None
    missing = [key for key in required if key not in kwargs]
    if missing:
        raise ValueError(f"dataset {name} needs {', '.join(k + '=...' for k in missing)} in {dataset_str!r}")
    return class_, kwargs


def make_dataset(
    *,
    dataset_str: str,
    transform: Callable | None = None,
    target_transform: Callable | None = None,
) -> Dataset:
    """Builds a dataset from a string such as ``ImageFolder:root=/data/images`` or
    ``ImageNet:split=TRAIN:root=/data/in1k:extra=/data/in1k_extra`` (see README for every name and key)."""
    logger.info('using dataset: "%s"', dataset_str)
    class_, kwargs = _parse_dataset_str(dataset_str)
    dataset = class_(transform=transform, target_transform=target_transform, **kwargs)
    logger.info("# of dataset samples: %s", f"{len(dataset):,d}")
    # Callers read and set these attributes, so every dataset returned has them.
    if not hasattr(dataset, "transform"):
        dataset.transform = transform
    if not hasattr(dataset, "target_transform"):
        dataset.target_transform = target_transform
    return dataset


def _make_sampler(
    *,
    dataset: Dataset,
    type: SamplerType | None = None,
    shuffle: bool = False,
    seed: int = 0,
    size: int = -1,
    advance: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
) -> Sampler | None:
    """One sampler per ``SamplerType``; ``advance`` is a global sample count (see ``dinov2.data.samplers``)."""
    sample_count = len(dataset)
    # what the index samplers share: the indices, their order and this rank's place in it
    position = {
        "sample_count": sample_count, "shuffle": shuffle, "seed": seed, "start": rank, "step": world_size,
        "advance": advance,
    }  # fmt: skip
    if type == SamplerType.INFINITE:
        logger.info("sampler: infinite")
        if size > 0:
            raise ValueError(f"sampler_size={size} is not supported by the INFINITE sampler; leave it at -1")
        return InfiniteSampler(**position)
    if type in (SamplerType.SHARDED_INFINITE, SamplerType.SHARDED_INFINITE_NEW):
        logger.info("sampler: sharded infinite")
        if size > 0:
            raise ValueError(f"sampler_size={size} is not supported by the {type.name} sampler; leave it at -1")
        return ShardedInfiniteSampler(**position, use_new_shuffle_tensor_slice=type == SamplerType.SHARDED_INFINITE_NEW)
    if type == SamplerType.EPOCH:
        logger.info("sampler: epoch")
        return EpochSampler(size=size if size > 0 else sample_count, **position)
    if type == SamplerType.DISTRIBUTED:
        logger.info("sampler: distributed")
        if size > 0:
            raise ValueError(f"sampler_size={size} is not supported by the DISTRIBUTED sampler; leave it at -1")
        return ResumableDistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False, advance=advance
        )
    if type is None:
        logger.info("sampler: none")
        return None
    raise ValueError(f"unknown sampler type {type!r}; use one of {[t.name for t in SamplerType]}")


def make_data_loader(
    *,
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool = True,
    seed: int = 0,
    sampler_type: SamplerType | None = SamplerType.INFINITE,
    sampler_size: int = -1,
    sampler_advance: int = 0,
    drop_last: bool = True,
    persistent_workers: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` with the chosen sampler.

    ``sampler_advance`` counts samples consumed by all ranks together (iteration x batch size per rank x world
    size) so a resumed run continues exactly where it stopped. ``pin_memory`` defaults to whether an accelerator is
    available (pinning on a CPU-only machine only produces a warning).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    sampler = _make_sampler(
        dataset=dataset, type=sampler_type, shuffle=shuffle, seed=seed, size=sampler_size, advance=sampler_advance
    )
    if pin_memory is None:
        pin_memory = torch.accelerator.is_available()
    logger.info("using PyTorch data loader")
    data_loader = DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=persistent_workers and num_workers > 0,
        collate_fn=collate_fn,
        worker_init_fn=ignore_stop_signals,
    )
    try:
        logger.info("# of batches: %s", f"{len(data_loader):,d}")
    except TypeError:  # an infinite sampler has no length
        logger.info("infinite data loader")
    return data_loader
