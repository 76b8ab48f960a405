import itertools
import pickle

import pytest
import torch
from torch.utils.data import DistributedSampler

from dinov2.data import SamplerType
from dinov2.data.loaders import _make_sampler
from dinov2.data.samplers import EpochSampler, InfiniteSampler, ResumableDistributedSampler, ShardedInfiniteSampler

N = 10  # dataset size; with 2 ranks a sharded pass has 5 items per rank
WORLD = 2


class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _sampler(kind: SamplerType, *, rank: int, world: int = WORLD, advance: int = 0, n: int = N, shuffle: bool = True):
    return _make_sampler(
        dataset=_Sized(n), type=kind, shuffle=shuffle, seed=3, advance=advance, rank=rank, world_size=world
    )


def _take(sampler, count: int) -> list[int]:
    return [int(i) for i in itertools.islice(iter(sampler), count)]


# Global positions before A that belong to rank r (positions r, r + 2, ...): derived by hand for W = 2.
# advance 0 -> (0, 0); 6 -> (3, 3); 7 -> rank 0 has 0,2,4,6 -> 4, rank 1 has 1,3,5 -> 3; 23 -> (12, 11).
_LOCAL_SKIPS = {0: (0, 0), 6: (3, 3), 7: (4, 3), 23: (12, 11)}
_ALL_TYPES = list(SamplerType)
_EPOCH_TYPES = [SamplerType.EPOCH, SamplerType.DISTRIBUTED]


# Epoch samplers resume within one epoch (advance < epoch size); larger values are rejected, tested below.
_RESUME_CASES = [(k, a) for k in _ALL_TYPES for a in _LOCAL_SKIPS if not (k in _EPOCH_TYPES and a >= N)]


@pytest.mark.parametrize(("kind", "advance"), _RESUME_CASES)
@pytest.mark.parametrize("shuffle", [True, False])
def test_resume_continues_the_uninterrupted_sequence(kind: SamplerType, shuffle: bool, advance: int) -> None:
    for rank in range(WORLD):
        skip = _LOCAL_SKIPS[advance][rank]
        length = 30 if kind not in _EPOCH_TYPES else N // WORLD
        uninterrupted = _take(_sampler(kind, rank=rank, shuffle=shuffle), length)
        resumed = _take(_sampler(kind, rank=rank, advance=advance, shuffle=shuffle), length - skip)
        assert resumed == uninterrupted[skip:], (kind, rank)


@pytest.mark.parametrize("kind", [SamplerType.INFINITE, SamplerType.EPOCH])
def test_global_stream_does_not_depend_on_world_size(kind: SamplerType) -> None:
    """Run 8 samples on 1 process, resume on 2: the interleaved ranks continue the 1-process stream."""
    single = _take(_sampler(kind, rank=0, world=1), N)
    rank0 = _take(_sampler(kind, rank=0, advance=4), 3)
    rank1 = _take(_sampler(kind, rank=1, advance=4), 3)
    assert [x for pair in zip(rank0, rank1) for x in pair] == single[4:10]


def test_distributed_matches_torch_and_shards_the_one_stream() -> None:
    for rank in range(WORLD):
        ours = ResumableDistributedSampler(_Sized(N), num_replicas=WORLD, rank=rank, shuffle=True, seed=3)
        theirs = DistributedSampler(_Sized(N), num_replicas=WORLD, rank=rank, shuffle=True, seed=3)
        assert list(ours) == list(theirs)
        assert len(ours) == len(theirs)
    single = list(ResumableDistributedSampler(_Sized(N), num_replicas=1, rank=0, seed=3))
    rank0 = list(ResumableDistributedSampler(_Sized(N), num_replicas=2, rank=0, seed=3, advance=4))
    rank1 = list(ResumableDistributedSampler(_Sized(N), num_replicas=2, rank=1, seed=3, advance=4))
    assert [x for pair in zip(rank0, rank1) for x in pair] == single[4:]


def test_epoch_advance_applies_to_one_epoch_only_and_len_follows() -> None:
    sampler = EpochSampler(size=N, sample_count=N, shuffle=True, seed=3, start=1, step=2, advance=7)
    assert len(sampler) == 5 - 3
    first = list(sampler)
    assert len(first) == 2
    assert len(sampler) == 5 and len(list(sampler)) == 5
    with pytest.raises(ValueError, match="set_epoch"):
        EpochSampler(size=N, sample_count=N, advance=N, start=0, step=1)


def test_epoch_sampler_tiles_and_reshuffles_per_epoch() -> None:
    sampler = EpochSampler(size=25, sample_count=N, shuffle=True, seed=3, start=0, step=1)
    epoch0 = list(sampler)
    # 25 draws without replacement from the dataset tiled 3 times: no index more than 3 times
    assert len(epoch0) == 25 and set(epoch0) <= set(range(N)) and max(epoch0.count(i) for i in range(N)) <= 3
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    plain = list(EpochSampler(size=25, sample_count=N, start=0, step=1))
    assert plain == list(range(N)) * 2 + list(range(5))


def test_infinite_passes_are_permutations_that_differ() -> None:
    stream = _take(InfiniteSampler(sample_count=N, shuffle=True, seed=3, start=0, step=1), 3 * N)
    passes = [stream[i * N : (i + 1) * N] for i in range(3)]
    assert all(sorted(p) == list(range(N)) for p in passes)
    assert passes[0] != passes[1] != passes[2]
    assert _take(InfiniteSampler(sample_count=N, start=1, step=2), 7) == [1, 3, 5, 7, 9, 1, 3]


@pytest.mark.parametrize("kind", [SamplerType.SHARDED_INFINITE, SamplerType.SHARDED_INFINITE_NEW])
def test_sharded_pass_covers_the_dataset_once_across_ranks(kind: SamplerType) -> None:
    n = 11  # one sample per pass is dropped (11 mod 2)
    passes = [_take(_sampler(kind, rank=r, n=n), 3 * 5) for r in range(WORLD)]
    for p in range(3):
        seen = passes[0][p * 5 : (p + 1) * 5] + passes[1][p * 5 : (p + 1) * 5]
        assert len(set(seen)) == 10 and set(seen) <= set(range(n))
    assert passes[0][:5] != passes[0][5:10]  # each pass reshuffles the shard
    assert sorted(passes[0][:5]) == sorted(passes[0][5:10])  # ... but keeps the same shard


def test_sharded_old_and_new_shuffles_differ_but_use_the_same_shard() -> None:
    old = _take(_sampler(SamplerType.SHARDED_INFINITE, rank=0), 5)
    new = _take(_sampler(SamplerType.SHARDED_INFINITE_NEW, rank=0), 5)
    assert sorted(old) == sorted(new)


@pytest.mark.parametrize("kind", _ALL_TYPES)
def test_samplers_pickle_before_and_after_iteration(kind: SamplerType) -> None:
    sampler = _sampler(kind, rank=1, advance=3)
    expected = _take(pickle.loads(pickle.dumps(sampler)), 4)
    assert _take(sampler, 4) == expected


def test_defaults_come_from_the_process_group_helpers() -> None:
    sampler = InfiniteSampler(sample_count=N)  # no process group: rank 0 of 1
    assert _take(sampler, 3) == [0, 1, 2]


def test_sizes_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sampler_size"):
        _make_sampler(dataset=_Sized(N), type=SamplerType.INFINITE, size=5)
    with pytest.raises(ValueError, match="sampler_size"):
        _make_sampler(dataset=_Sized(N), type=SamplerType.DISTRIBUTED, size=5)
    with pytest.raises(ValueError, match="advance"):
        InfiniteSampler(sample_count=N, advance=-1)
    with pytest.raises(ValueError, match="start"):
        InfiniteSampler(sample_count=N, start=2, step=2)
    with pytest.raises(ValueError, match="sample_count"):
        ShardedInfiniteSampler(sample_count=1, start=0, step=2)
    assert _make_sampler(dataset=_Sized(N), type=None) is None
    epoch = _make_sampler(dataset=_Sized(N), type=SamplerType.EPOCH, size=4, rank=0, world_size=1)
    assert len(epoch) == 4


def test_generator_is_created_per_iteration() -> None:
    sampler = InfiniteSampler(sample_count=N, shuffle=True, seed=5, start=0, step=1)
    torch.manual_seed(0)
    a = _take(sampler, N)
    torch.manual_seed(1)  # the global RNG does not matter
    assert _take(sampler, N) == a


def test_rank_and_world_size_default_to_the_distributed_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    import dinov2.data.samplers as samplers_module

    monkeypatch.setattr(samplers_module, "get_global_rank", lambda: 1)
    monkeypatch.setattr(samplers_module, "get_global_size", lambda: 2)
    assert _take(InfiniteSampler(sample_count=N), 3) == [1, 3, 5]
    assert _take(ShardedInfiniteSampler(sample_count=N), 3) == [1, 3, 5]
    assert list(EpochSampler(size=4, sample_count=N)) == [1, 3]
    assert list(ResumableDistributedSampler(_Sized(4), shuffle=False)) == [1, 3]


@pytest.mark.parametrize("sampler_class", [InfiniteSampler, ShardedInfiniteSampler, EpochSampler])
def test_empty_dataset_error_names_the_sampler(sampler_class) -> None:
    extra = {"size": 4} if sampler_class is EpochSampler else {}
    with pytest.raises(ValueError, match=f"{sampler_class.__name__} needs sample_count > 0"):
        sampler_class(sample_count=0, start=0, step=1, **extra)
    with pytest.raises(ValueError, match="advance"):
        sampler_class(sample_count=N, start=0, step=1, advance=-1, **extra)
