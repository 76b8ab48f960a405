"""Mixed precision of a single process (sharded modules get theirs from FSDP's ``MixedPrecisionPolicy``)."""

import contextlib

import torch

from dinov2.utils.dtype import as_torch_dtype

__all__ = ["autocast_context"]


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for a single process: ``torch.autocast`` on ``device.type`` for fp16/bf16, nothing for fp32."""
    dtype = as_torch_dtype(dtype)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"autocast dtype must be float32, float16 or bfloat16, got {dtype}")
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
