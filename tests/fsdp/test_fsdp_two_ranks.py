"""FSDP2 sharding and DCP checkpoints across world sizes, with 2 gloo processes on CPU."""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from dinov2 import distributed
from dinov2.fsdp import full_state_dict, is_sharded, register_forward_methods, shard_module
from dinov2.fsdp.checkpointer import Checkpointer
from dinov2.utils.rng import restore_rng_state
from tests.distributed.spawn import run_ranks


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.GELU()) for _ in range(2)])
        self.head = nn.Linear(8, 3)
        self.register_buffer("center", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x) - self.center

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


class _FailsWhenPickled:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def _batch(rank: int) -> torch.Tensor:
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(100 + rank))  # [B, 6]


def _make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad()
    out = model(x)
    (out**2).mean().backward()
    optimizer.step()
    return out.detach()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _check_strategies(rank: int, world: int) -> None:
    """Each sharding strategy gives the unsharded model's gradients (averaged over ranks)."""
    for strategy in ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD"):
        torch.manual_seed(1)
        model = TinyNet()
        reference = copy.deepcopy(model)
        shard_module(
            model,
            blocks=list(model.blocks),
            param_dtype=torch.float32,
            reduce_dtype=torch.float32,
            sharding_strategy=strategy,
        )
        (model(_batch(rank)) ** 2).mean().backward()
        (sum((reference(_batch(r)) ** 2).mean() for r in range(world)) / world).backward()
        for (name, param), ref_param in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(_local(param.grad), ref_param.grad, rtol=1e-5, atol=1e-6, msg=name)


def _two_rank_worker(rank: int, ckpt_in: str, ckpt_out: str, expected_in: str, expected_out: str) -> None:
    world = distributed.get_global_size()
    _check_strategies(rank, world)
    torch.manual_seed(0)
    model = TinyNet()
    reference = copy.deepcopy(model)  # unsharded twin, trained on the batches of both ranks
    model = shard_module(model, blocks=list(model.blocks), param_dtype=torch.float32, reduce_dtype=torch.float32)
    register_forward_methods(model, ["features"])
    assert is_sharded(model) and not is_sharded(reference)
    optimizer, ref_optimizer = _make_optimizer(model), _make_optimizer(reference)

    # 1 -> 2 ranks: a checkpoint written by a single process loads into the sharded model.
    checkpointer_in = Checkpointer(ckpt_in)
    extra = checkpointer_in.load(checkpointer_in.latest(), model=model, optimizer=optimizer)
    assert extra["who"] == "parent" and extra["iteration"] == 1
    # Both ranks restored the parent's RNG state; rank 1 (beyond the old world size) re-seeded from it.
    draws = distributed.all_gather_object(torch.rand(3))
    assert not torch.equal(draws[0], draws[1])
    torch.testing.assert_close(draws[0], torch.load(expected_in)["draw"], rtol=0, atol=0)
    # restore_rng=False leaves the RNG alone; extra["rng"] is this rank's (derived) state to apply later.
    torch.manual_seed(123)
    extra = checkpointer_in.load(checkpointer_in.latest(), model=reference, optimizer=ref_optimizer, restore_rng=False)
    untouched = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(untouched, torch.rand(3))
    restore_rng_state(extra["rng"])
    torch.testing.assert_close(torch.rand(3), draws[rank], rtol=0, atol=0)
    expected = torch.load(expected_in)
    gathered = full_state_dict(model)
    if rank == 0:
        assert gathered.keys() == expected["model"].keys()
        for key, value in expected["model"].items():
            torch.testing.assert_close(gathered[key], value, rtol=0, atol=0)
    else:
        assert gathered == {}  # full tensors only on rank 0

    # Forward / backward / step equal an unsharded model on the concatenated batch.
    x = _batch(rank)
    out = _train_step(model, optimizer, x)
    ref_optimizer.zero_grad()
    ref_loss = sum((reference(_batch(r)) ** 2).mean() for r in range(world)) / world
    ref_loss.backward()
    torch.testing.assert_close(out, reference(x).detach(), rtol=1e-5, atol=1e-6)
    ref_optimizer.step()
    for (name, param), ref_param in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(_local(param.detach()), ref_param.detach(), rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(model.features(x), reference.features(x), rtol=1e-5, atol=1e-6)

    # 2 ranks -> (parent) 1 process.
    checkpointer_out = Checkpointer(ckpt_out)
    checkpointer_out.save(2, model=model, optimizer=optimizer, extra={"rank": rank})
    if rank == 0:
        torch.save({"model": reference.state_dict(), "optimizer": ref_optimizer.state_dict()}, expected_out)

    # A failure on one rank raises on both (no rank is left hanging) and keeps the previous checkpoint.
    bomb = _FailsWhenPickled() if rank == 1 else None
    with pytest.raises(RuntimeError, match="disk full" if rank == 1 else "failed on another rank"):
        checkpointer_out.save(3, model=model, optimizer=optimizer, extra={"bomb": bomb})
    assert checkpointer_out.latest() == Path(ckpt_out) / "ckpt" / "0000002"
    _check_container_round_trip(Path(ckpt_out) / "container")


def _check_container_round_trip(directory: Path) -> None:
    """Like SSLMetaArch: an unsharded root holding separately sharded parts saves and loads."""
    parts = {}
    for seed, name in enumerate(("student", "teacher")):
        torch.manual_seed(seed)
        part = TinyNet()
        parts[name] = shard_module(
            part, blocks=list(part.blocks), param_dtype=torch.float32, reduce_dtype=torch.float32
        )
    container = nn.ModuleDict(parts)
    before = full_state_dict(container)
    Checkpointer(directory).save(0, model=container)
    fresh = nn.ModuleDict({name: TinyNet() for name in ("student", "teacher")})
    for part in fresh.values():
        shard_module(part, blocks=list(part.blocks), param_dtype=torch.float32, reduce_dtype=torch.float32)
    Checkpointer(directory).load(directory / "ckpt" / "0000000", model=fresh)
    after = full_state_dict(fresh)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[key], value) for key, value in before.items())


@pytest.mark.slow
def test_sharded_training_and_checkpoints_across_world_sizes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    parent = TinyNet()
    parent_optimizer = _make_optimizer(parent)
    _train_step(parent, parent_optimizer, _batch(7))
    parent.center.fill_(0.25)  # buffers travel too
    Checkpointer(tmp_path / "in").save(1, model=parent, optimizer=parent_optimizer, extra={"who": "parent"})
    next_draw = torch.rand(3)  # what a resumed rank 0 must draw first
    torch.save({"model": parent.state_dict(), "draw": next_draw}, tmp_path / "expected_in.pt")

    run_ranks(
        _two_rank_worker,
        2,
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        str(tmp_path / "expected_in.pt"),
        str(tmp_path / "expected_out.pt"),
    )

    model = TinyNet()
    optimizer = _make_optimizer(model)
    checkpointer = Checkpointer(tmp_path / "out")
    assert checkpointer.latest() == tmp_path / "out" / "ckpt" / "0000002"
    extra = checkpointer.load(checkpointer.latest(), model=model, optimizer=optimizer)
    assert extra["iteration"] == 2 and extra["rank"] == 0
    expected = torch.load(tmp_path / "expected_out.pt")
    for key, value in expected["model"].items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert model.center.eq(0.25).all()
    loaded_state, expected_state = optimizer.state_dict()["state"], expected["optimizer"]["state"]
    assert loaded_state.keys() == expected_state.keys() and len(loaded_state) == 8
    for index, entries in expected_state.items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(loaded_state[index][name], entries[name], rtol=1e-5, atol=1e-7)
