"""The self-supervised training loader: an infinite, sharded, shuffled stream of multi-crop batches with iBOT masks,
continued exactly where a resumed run left off.

Each sample's augmentation is seeded by its position in the global stream (not by the worker that makes it) and
each batch's masks by the position of its first sample, so a resumed run redraws the same crops and masks with any
number of workers. Plain arguments only: ``dinov2.train`` maps the config onto them.
"""

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dinov2.data.loaders import make_dataset
from dinov2.data.samplers import ShardedInfiniteSampler
from dinov2.utils.rng import seeded

__all__ = ["make_ssl_data_loader"]


def _no_target(_: Any) -> tuple:
    return ()


class _PositionedSampler(Sampler):
    """Yields ``(position, index)``: each index with its position in the global sample stream (all ranks
    interleaved: rank r's k-th sample after ``first_position`` is ``first_position + k * world_size + r``)."""

    def __init__(self, sampler: Sampler, *, first_position: int, rank: int, world_size: int) -> None:
        self.sampler = sampler
        self.first_position, self.rank, self.world_size = first_position, rank, world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for k, index in enumerate(self.sampler):
            yield self.first_position + k * self.world_size + self.rank, index


class _SeededSamples(Dataset):
    """``dataset[index]`` (decoding + augmentation) with the RNGs seeded by the sample's stream position; returns
    ``(crops, position)``."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Any, int]:
        position, index = item
        with seeded(self.seed, position):
            crops, _ = self.dataset[index]
        return crops, position


def _seeded_collate(samples: list[tuple[Any, int]], *, seed: int, collate_fn: Callable) -> dict[str, Any]:
    with seeded(seed + 1, samples[0][1]):  # masks seeded by the batch's first position on this rank
        return collate_fn(samples)


def make_ssl_data_loader(
    dataset_str: str,
    *,
    transform: Callable,
    collate_fn: Callable,
    batch_size: int,
    num_workers: int,
    seed: int,
    first_position: int = 0,
    rank: int = 0,
    world_size: int = 1,
    worker_init_fn: Callable[[int], None] | None = None,
) -> DataLoader:
    """Batches of ``batch_size`` samples of ``dataset_str`` for this rank, from global stream position
    ``first_position`` on (the samples all ranks consumed before), each sample through ``transform`` (the
    multi-crop augmentation) and each batch through ``collate_fn`` (collation and masks)."""
    dataset = make_dataset(dataset_str=dataset_str, transform=transform, target_transform=_no_target)
    sampler = ShardedInfiniteSampler(
        sample_count=len(dataset), shuffle=True, seed=seed, start=rank, step=world_size, advance=first_position
    )
    return DataLoader(
        _SeededSamples(dataset, seed),
        sampler=_PositionedSampler(sampler, first_position=first_position, rank=rank, world_size=world_size),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=torch.accelerator.is_available(),
        drop_last=True,
        collate_fn=partial(_seeded_collate, seed=seed, collate_fn=collate_fn),
        worker_init_fn=worker_init_fn,
    )
