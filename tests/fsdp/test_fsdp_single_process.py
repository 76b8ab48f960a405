"""dinov2.fsdp without a process group: nothing is sharded, autocast gives the mixed precision."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from dinov2 import distributed
from dinov2.fsdp import (
    SHARDING_STRATEGIES,
    autocast_context,
    full_state_dict,
    get_fsdp_wrapper,
    get_sharding_options,
    is_sharded,
    register_forward_methods,
    shard_module,
)


@pytest.fixture(autouse=True)
def _no_group() -> None:
    assert not distributed.is_enabled()


def test_shard_module_is_identity_without_group() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    out = shard_module(model, blocks=list(model), param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    assert out is model and not is_sharded(model)
    assert all(param.dtype == torch.float32 for param in model.parameters())
    register_forward_methods(model, ["forward"])  # no-op on an unsharded module
    state = full_state_dict(model)
    assert state.keys() == before.keys()
    assert all(torch.equal(state[key], value) and state[key].device.type == "cpu" for key, value in before.items())


def test_sharding_strategy_table() -> None:
    assert set(SHARDING_STRATEGIES) == {"FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD"}
    assert get_sharding_options("FULL_SHARD").reshard_after_forward
    assert not get_sharding_options("shard_grad_op").reshard_after_forward
    assert get_sharding_options("NO_SHARD").replicate
    with pytest.raises(ValueError, match="HYBRID_SHARD"):
        get_sharding_options("HYBRID_SHARD")


def test_get_fsdp_wrapper_reads_a_config_node() -> None:
    cfg = OmegaConf.create(
        {"sharding_strategy": "SHARD_GRAD_OP", "mixed_precision": {"param_dtype": "fp16", "reduce_dtype": "fp32"}}
    )
    model = nn.Sequential(nn.Linear(2, 2))
    assert get_fsdp_wrapper(cfg, modules_to_wrap={nn.Linear})(model) is model
    bad = OmegaConf.create(
        {"sharding_strategy": "SHARD_GRAD_OP", "mixed_precision": {"param_dtype": "fp12", "reduce_dtype": "fp32"}}
    )
    with pytest.raises(ValueError, match="fp12"):
        get_fsdp_wrapper(bad)
    cfg.sharding_strategy = "ZERO_3"
    with pytest.raises(ValueError, match="ZERO_3"):
        get_fsdp_wrapper(cfg)


def test_autocast_context(device: torch.device) -> None:
    layer = nn.Linear(8, 8).to(device)
    x = torch.randn(2, 8, device=device)  # [B, 8]
    with autocast_context(device, torch.float32):
        assert layer(x).dtype == torch.float32
    with autocast_context(device, "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="float64"):
        autocast_context(device, torch.float64)
