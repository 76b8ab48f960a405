"""Full (unsharded) state dicts of possibly sharded modules, for exports."""

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from .sharding import is_sharded

__all__ = ["full_state_dict"]


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU state dict with plain (non-FSDP-prefixed) keys. Collective when ``module`` is sharded: every
    rank must call it; the full tensors are then only returned on rank 0 (other ranks get an empty dict, to spare
    host memory). Works without a process group."""
    if not is_sharded(module):
        return {key: value.detach().cpu() for key, value in module.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options)
