import numpy as np
import pytest
import torch

from dinov2.utils.dtype import as_torch_dtype


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("fp16", torch.float16),
        ("bf16", torch.bfloat16),
        ("fp32", torch.float32),
        ("float32", torch.float32),
        ("torch.bfloat16", torch.bfloat16),
        (np.dtype("float16"), torch.float16),
        (np.int64, torch.int64),
        (torch.uint8, torch.uint8),
    ],
)
def test_as_torch_dtype(spec, expected):
    assert as_torch_dtype(spec) is expected


def test_unknown_dtype_names_choices():
    with pytest.raises(ValueError, match="bf16"):
        as_torch_dtype("fp8")
