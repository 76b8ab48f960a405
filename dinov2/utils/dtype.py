"""The package's one table from dtype names (config strings, numpy dtypes) to torch dtypes."""

import numpy as np
import torch

TypeSpec = str | np.dtype | torch.dtype

_NAME_TO_DTYPE: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
}


def as_torch_dtype(dtype: TypeSpec) -> torch.dtype:
    """Accepts a torch dtype, a numpy dtype or a name such as ``"bf16"``, ``"fp32"`` or ``"float16"``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = np.dtype(dtype).name if isinstance(dtype, np.dtype | type) else str(dtype).lower()
    if name.startswith("torch."):
        name = name[len("torch.") :]
    try:
        return _NAME_TO_DTYPE[name]
    except KeyError:
        choices = sorted(_NAME_TO_DTYPE)
        raise ValueError(f"unknown dtype {dtype!r}; expected a torch dtype or one of {choices}") from None
