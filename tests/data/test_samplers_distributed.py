"""The samplers under a real 2-process gloo group: rank and world size come from the group."""

import itertools
import json
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from dinov2.data import SamplerType
from dinov2.data.loaders import _make_sampler

N = 10
ADVANCE = 7
TYPES = [SamplerType.INFINITE, SamplerType.SHARDED_INFINITE, SamplerType.EPOCH, SamplerType.DISTRIBUTED]


class _Sized:
    def __len__(self) -> int:
        return N


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        result = {}
        for kind in TYPES:
            sampler = _make_sampler(dataset=_Sized(), type=kind, shuffle=True, seed=1, advance=ADVANCE)
            result[kind.name] = [int(i) for i in itertools.islice(iter(sampler), 4)]
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_match_explicit_ranks(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for kind in TYPES:
            sampler = _make_sampler(
                dataset=_Sized(), type=kind, shuffle=True, seed=1, advance=ADVANCE, rank=rank, world_size=2
            )
            assert got[kind.name] == [int(i) for i in itertools.islice(iter(sampler), 4)], (kind, rank)
