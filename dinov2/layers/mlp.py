"""The ViT feed-forward block: Linear -> activation -> Linear (keys ``fc1``, ``fc2``)."""

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """Two-layer MLP with dropout after each layer; ``hidden_features``/``out_features`` default to the input size."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        drop: float = 0.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, device=device, dtype=dtype)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, device=device, dtype=dtype)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc1(x)))  # [..., hidden]
        return self.drop(self.fc2(x))  # [..., out]
