"""Sharding modules with FSDP2 as the config's ``sharding_strategy`` and ``mixed_precision`` say (a no-op without a
process group)."""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from dinov2 import distributed
from dinov2.utils.dtype import as_torch_dtype

__all__ = [
    "SHARDING_STRATEGIES",
    "ShardingOptions",
    "get_fsdp_wrapper",
    "get_sharding_options",
    "is_sharded",
    "register_forward_methods",
    "reshard_fsdp_model",
    "shard_module",
]

ShardingStrategy = Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD"]


@dataclass(frozen=True)
class ShardingOptions:
    """FSDP2 settings standing for one FSDP1 sharding strategy."""

    reshard_after_forward: bool
    replicate: bool  # True: full replicas on a [W, 1] mesh (gradients all-reduced, nothing sharded)


SHARDING_STRATEGIES: dict[str, ShardingOptions] = {
    "FULL_SHARD": ShardingOptions(reshard_after_forward=True, replicate=False),
    "SHARD_GRAD_OP": ShardingOptions(reshard_after_forward=False, replicate=False),
    "NO_SHARD": ShardingOptions(reshard_after_forward=False, replicate=True),
}


def get_sharding_options(sharding_strategy: str) -> ShardingOptions:
    """The FSDP2 settings for a config ``sharding_strategy`` name (case-insensitive)."""
    try:
        return SHARDING_STRATEGIES[str(sharding_strategy).upper()]
    except KeyError:
        raise ValueError(
            f"unknown sharding_strategy {sharding_strategy!r}; expected one of {sorted(SHARDING_STRATEGIES)}"
        ) from None


def is_sharded(module: nn.Module) -> bool:
    """True when ``module`` or any submodule is FSDP-sharded (its state dict then holds DTensors)."""
    return any(isinstance(child, FSDPModule) for child in module.modules())


def reshard_fsdp_model(module: nn.Module) -> None:
    """Frees the gathered parameters of every FSDP unit (e.g. after a teacher forward run without backward)."""
    for child in module.modules():
        if isinstance(child, FSDPModule):
            child.reshard()


def shard_module(
    module: nn.Module,
    *,
    blocks: Sequence[nn.Module] = (),
    param_dtype: torch.dtype,
    reduce_dtype: torch.dtype,
    reshard_after_forward: bool = True,
    sharding_strategy: ShardingStrategy | None = None,
) -> nn.Module:
    """Applies ``fully_shard`` to each of ``blocks`` (one FSDP unit each, so only one block is gathered at a time),
    then to ``module``, with ``MixedPrecisionPolicy(param_dtype, reduce_dtype)``, when a process group exists.
    Without one, returns ``module`` unchanged (a single process needs no sharding; use :func:`autocast_context`).

    ``sharding_strategy``, when given, overrides ``reshard_after_forward`` (see :data:`SHARDING_STRATEGIES`).
    Parameters must already be on the compute device (or on the meta device, materialised afterwards).
    A module run forward without backward (the teacher) keeps its gathered parameters when
    ``reshard_after_forward`` is False: free them with :func:`reshard_fsdp_model`.
    """
    param_dtype, reduce_dtype = as_torch_dtype(param_dtype), as_torch_dtype(reduce_dtype)
    if not distributed.is_enabled():
        return module
    replicate = False
    if sharding_strategy is not None:
        options = get_sharding_options(sharding_strategy)
        reshard_after_forward, replicate = options.reshard_after_forward, options.replicate
    mesh = distributed.get_device_mesh(replicate=replicate)
    mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp_policy)
    fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp_policy)
    return module


def register_forward_methods(module: nn.Module, names: Sequence[str]) -> None:
    """Makes methods other than ``forward`` (e.g. ``get_intermediate_layers``) gather the sharded parameters
    like ``forward`` does; a no-op for a module that is not FSDP-sharded."""
    if not isinstance(module, FSDPModule):
        return
    for name in names:
        if not callable(getattr(module, name, None)):
            raise ValueError(f"{type(module).__name__} has no method {name!r} to register for FSDP")
        register_fsdp_forward_method(module, name)


def get_fsdp_wrapper(
    model_cfg: Any, modules_to_wrap: Iterable[type[nn.Module]] = ()
) -> Callable[[nn.Module], nn.Module]:
    """Returns a function that shards a module as one ``compute_precision.<model>.<part>`` config node
    says (``sharding_strategy``, ``mixed_precision.param_dtype/reduce_dtype``), with every submodule of a class in
    ``modules_to_wrap`` as its own unit. ``buffer_dtype`` is accepted and ignored: FSDP2 leaves buffers as they are.
    """
    wrap_types = tuple(modules_to_wrap)
    precision = model_cfg["mixed_precision"]
    # Read and checked now, so a bad config fails before any model is built.
    param_dtype = as_torch_dtype(precision["param_dtype"])
    reduce_dtype = as_torch_dtype(precision["reduce_dtype"])
    strategy = str(model_cfg["sharding_strategy"]).upper()
    get_sharding_options(strategy)

    def wrap(module: nn.Module) -> nn.Module:
        blocks = [child for child in module.modules() if wrap_types and isinstance(child, wrap_types)]
        blocks = [child for child in blocks if child is not module]
        return shard_module(
            module, blocks=blocks, param_dtype=param_dtype, reduce_dtype=reduce_dtype, sharding_strategy=strategy
        )

    return wrap
