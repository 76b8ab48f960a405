"""Samplers that shard a seeded index stream over ranks and can resume at an exact sample position.

Resume contract, shared by every sampler here: ``advance`` counts samples consumed **globally**, by all ranks
together (``iteration * batch_size_per_rank * world_size``). Each sampler defines a global stream of dataset
indices; rank ``r`` of ``W`` (``start=r``, ``step=W``) takes global positions ``r, r + W, r + 2W, ...`` and, after
``advance=A``, starts at the first such position ``>= A``. So an interrupted run restarted with ``advance`` equal to
the samples it consumed continues exactly where it stopped.

What the global stream depends on:

* ``EpochSampler``, ``InfiniteSampler``: only on the seed (and epoch), **not on the world size**; a run may
  resume with a different number of processes and still continue the same global stream.
* ``ResumableDistributedSampler`` (``SamplerType.DISTRIBUTED``): as torch's ``DistributedSampler``; independent of
  the world size except for the padding appended at the end of each epoch.
* ``ShardedInfiniteSampler``: by design each rank shuffles its own shard ``perm[r::W]`` with a rank-dependent
  seed, so the stream depends on the world size; resume is exact at the same world size, and at another world size
  it resumes at the right pass but with a different order.

Samplers create their random generators in ``__iter__`` so that they stay picklable (DataLoader workers, checkpoints).
"""

import itertools
import logging
from collections.abc import Iterator, Sized

import numpy as np
import torch
import torch.utils.data

from dinov2.distributed import get_global_rank, get_global_size

logger = logging.getLogger(__name__)

__all__ = ["EpochSampler", "InfiniteSampler", "ShardedInfiniteSampler", "ResumableDistributedSampler"]


def _resolve_rank(start: int | None, step: int | None) -> tuple[int, int]:
    start = get_global_rank() if start is None else int(start)
    step = get_global_size() if step is None else int(step)
    if step < 1 or not 0 <= start < step:
        raise ValueError(f"sampler rank start={start} and world size step={step} need 0 <= start < step")
    return start, step


def _check_advance(advance: int) -> int:
    if int(advance) != advance or advance < 0:
        raise ValueError(f"sampler advance={advance} must be a non-negative number of samples (consumed globally)")
    return int(advance)


def _local_skip(advance: int, start: int, step: int) -> int:
    """How many of this rank's positions ``start, start + step, ...`` lie before global position ``advance``."""
    return max(0, -(-(advance - start) // step))


def _randperm(n: int, generator: torch.Generator) -> np.ndarray:
    """``randperm(n)`` in int32 up to 2**31: the draws depend on the dtype, and int32 is the index dtype of the
    official DINOv2 sampler, so its sample orders are reproduced."""
    dtype = torch.int32 if n <= 2**31 else torch.int64
    return torch.randperm(n, dtype=dtype, generator=generator).numpy()  # [n]


def _seeded_generator(seed: int) -> torch.Generator:
    # Samplers call this in __iter__, not __init__, so that they stay picklable.
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


class _RankStridedSampler(torch.utils.data.Sampler):
    """The arguments every sampler here shares: ``sample_count`` dataset indices, shuffling and its seed, this
    rank's stride (``start`` = rank, ``step`` = world size; from ``dinov2.distributed`` by default) and the global
    resume position ``advance``."""

    def __init__(
        self,
        *,
        sample_count: int,
        shuffle: bool = False,
        seed: int = 0,
        start: int | None = None,
        step: int | None = None,
        advance: int = 0,
    ) -> None:
        if sample_count <= 0:
            raise ValueError(
                f"{type(self).__name__} needs sample_count > 0 (got {sample_count}); is the dataset empty?"
            )
        self._sample_count = int(sample_count)
        self._shuffle = shuffle
        self._seed = seed
        self._start, self._step = _resolve_rank(start, step)
        self._advance = _check_advance(advance)

    def _local_skip(self) -> int:
        """How many of this rank's items the global position ``advance`` skips."""
        return _local_skip(self._advance, self._start, self._step)


class EpochSampler(_RankStridedSampler):
    """``size`` indices per epoch: the dataset tiled as often as needed, optionally drawn without replacement.

    The global stream of an epoch depends on (seed, epoch) only. ``advance`` applies to the next epoch iterated
    (the one being resumed) and must be smaller than ``size``; later epochs start at their beginning.
    """

    def __init__(
        self,
        *,
        size: int,
        sample_count: int,
        shuffle: bool = False,
        seed: int = 0,
        start: int | None = None,
        step: int | None = None,
        advance: int = 0,
    ) -> None:
        super().__init__(sample_count=sample_count, shuffle=shuffle, seed=seed, start=start, step=step, advance=advance)
        if size <= 0:
            raise ValueError(f"EpochSampler needs size > 0 (samples per epoch), got {size}")
        self._size = int(size)
        if self._advance >= self._size:
            raise ValueError(
                f"EpochSampler advance={advance} is not below the epoch size {size}; call set_epoch(advance // size) "
                "and pass advance % size"
            )
        self._epoch = 0

    def _epoch_indices(self) -> np.ndarray:
        count = -(-self._size // self._sample_count)
        tiled = np.tile(np.arange(self._sample_count), count)  # [count * sample_count]
        if not self._shuffle:
            return tiled[: self._size]
        seed = self._seed * self._epoch if self._seed != 0 else self._epoch
        return np.random.default_rng(seed).choice(tiled, self._size, replace=False)  # [size]

    def __iter__(self) -> Iterator[int]:
        skip = self._local_skip()
        self._advance = 0
        indices = self._epoch_indices()
        yield from indices[self._start + skip * self._step :: self._step].tolist()

    def __len__(self) -> int:
        return -(-(self._size - self._start) // self._step) - self._local_skip()

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch


class InfiniteSampler(_RankStridedSampler):
    """Endless passes over the dataset, each pass a fresh permutation when ``shuffle`` (one generator seeded once).

    The global stream is the concatenation of the passes, independent of the world size.
    """

    def __iter__(self) -> Iterator[int]:
        n = self._sample_count
        position = self._start + self._local_skip() * self._step
        if not self._shuffle:
            while True:
                yield position % n
                position += self._step
        generator = _seeded_generator(self._seed)
        current_pass, perm = -1, None
        while True:
            pass_index, offset = divmod(position, n)
            while current_pass < pass_index:  # earlier passes are drawn and dropped to keep the generator in sync
                perm = _randperm(n, generator)  # [n]
                current_pass += 1
            yield int(perm[offset])
            position += self._step


def _shuffle_slice_inside_out(values: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """Shuffles ``values`` by "inside-out" Fisher-Yates, with ``j = randint(0, i + 1)`` for i >= 1."""
    result = np.empty_like(values)  # [count]
    for i in range(len(values)):
        j = int(torch.randint(0, i + 1, size=(1,), generator=generator)) if i > 0 else 0
        result[i] = result[j]
        result[j] = values[i]
    return result


def _shuffle_slice_randperm(values: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """Faster variant: index the slice with one ``randperm``."""
    return values[torch.randperm(len(values), generator=generator).numpy()]


class ShardedInfiniteSampler(_RankStridedSampler):
    """Endless passes where rank ``r`` only shuffles its shard ``perm[r::W]`` of one global permutation.

    Each pass of rank r yields ``sample_count // W`` items (``sample_count mod W`` samples of the permutation are
    never used), reshuffled with seed ``seed + r + (pass << 24)``; seeds and shuffles are kept as in the official
    DINOv2 sampler so that a run sees the same samples in the same order. ``advance`` is a global sample count,
    converted to this rank's share. ``use_new_shuffle_tensor_slice`` picks the faster randperm shuffling
    (``SHARDED_INFINITE_NEW``).
    """

    def __init__(
        self,
        *,
        sample_count: int,
        shuffle: bool = False,
        seed: int = 0,
        start: int | None = None,
        step: int | None = None,
        advance: int = 0,
        use_new_shuffle_tensor_slice: bool = False,
    ) -> None:
        super().__init__(sample_count=sample_count, shuffle=shuffle, seed=seed, start=start, step=step, advance=advance)
        if sample_count < self._step:
            raise ValueError(
                f"ShardedInfiniteSampler needs at least one sample per rank: sample_count={sample_count} < world size "
                f"{self._step}"
            )
        self._shuffle_slice = _shuffle_slice_randperm if use_new_shuffle_tensor_slice else _shuffle_slice_inside_out

    def __iter__(self) -> Iterator[int]:
        local_skip = self._local_skip()
        if not self._shuffle:
            shard = range(self._start, self._sample_count, self._step)
            yield from shard[local_skip % len(shard) :]
            while True:
                yield from shard
        count = self._sample_count // self._step
        if self._sample_count % self._step:
            logger.warning(
                "ShardedInfiniteSampler drops %d samples of each pass (sample_count=%d is not a multiple of the "
                "world size %d)",
                self._sample_count % self._step,
                self._sample_count,
                self._step,
            )
        generator = _seeded_generator(self._seed)
        perm = _randperm(self._sample_count, generator)  # [sample_count]
        shard_values = perm[self._start :: self._step][:count]  # [count]
        iter_count, offset = divmod(local_skip, count)
        while True:
            generator.manual_seed(self._seed + self._start + (iter_count << 24))
            shuffled = self._shuffle_slice(shard_values, generator)  # [count]
            yield from shuffled[offset:].tolist()
            offset = 0
            iter_count += 1


class ResumableDistributedSampler(torch.utils.data.DistributedSampler):
    """torch's ``DistributedSampler`` (same order) that can start at a global sample position.

    Rank and world size default to the process group's, and it works without one (a single process).
    ``advance`` applies to the next epoch iterated only.
    """

    def __init__(
        self,
        dataset: Sized,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        advance: int = 0,
    ) -> None:
        rank, num_replicas = _resolve_rank(rank, num_replicas)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self._advance = _check_advance(advance)

    def __iter__(self) -> Iterator[int]:
        skip = _local_skip(self._advance, self.rank, self.num_replicas)
        self._advance = 0
        return itertools.islice(super().__iter__(), skip, None)

    def __len__(self) -> int:
        return max(0, self.num_samples - _local_skip(self._advance, self.rank, self.num_replicas))
