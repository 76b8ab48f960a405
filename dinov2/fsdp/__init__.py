"""FSDP2 sharding (``torch.distributed.fsdp.fully_shard``) through public API only, plus single-process autocast.

Without a process group nothing is sharded: ``shard_module`` returns the module unchanged, so the same training
code runs in one process. Mixed precision then comes from :func:`autocast_context` instead of the FSDP
``MixedPrecisionPolicy``.

``sharding_strategy`` config values (FSDP1 names, kept as in the official DINOv2 configs so that those still work)
map to FSDP2 through :data:`SHARDING_STRATEGIES`:

* ``FULL_SHARD``: parameters sharded, re-sharded after forward (``reshard_after_forward=True``, ZeRO-3);
* ``SHARD_GRAD_OP``: parameters sharded, kept gathered between forward and backward (``reshard_after_forward=False``);
* ``NO_SHARD``: full replicas with gradient all-reduce, done as FSDP2 on a ``[W, 1]`` (replicate, shard) mesh.
"""

from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

from . import precision, sharding, state_dict
from .precision import autocast_context
from .sharding import (
    SHARDING_STRATEGIES,
    ShardingOptions,
    get_fsdp_wrapper,
    get_sharding_options,
    is_sharded,
    register_forward_methods,
    reshard_fsdp_model,
    shard_module,
)
from .state_dict import full_state_dict

__all__ = ["ShardedGradScaler", *precision.__all__, *sharding.__all__, *state_dict.__all__]
