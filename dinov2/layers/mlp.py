"""The ViT feed-forward block: Linear -> activation -> Linear (keys ``fc1``, ``fc2``)."""

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """Two-layer MLP with dropout after each layer; ``hidden_features``/``out_features`` default to the input size.

    Without autograd an ``nn.GELU`` activation is applied in place on ``fc1``'s fresh output (same kernel, same
    values), which saves the largest allocation of the block; a forward hook on ``fc1`` that keeps its output must
    therefore clone it.
    """

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
        x = self.fc1(x)  # [..., hidden]
        if type(self.act) is nn.GELU and not torch.is_grad_enabled():
            x = torch.ops.aten.gelu_(x, approximate=self.act.approximate)
        else:
            x = self.act(x)
        return self.drop(self.fc2(self.drop(x)))  # [..., out]
