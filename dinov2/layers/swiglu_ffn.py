"""SwiGLU feed-forward (Shazeer 2020) in the packed layout of the released ViT-g (keys ``w12``, ``w3``).

The packed ``w12`` weight (first half gate, second half value) is the layout of xFormers' fused ``SwiGLU``, in
which the released checkpoints are stored, so this plain-torch version loads them and computes the same function.
``torch.compile`` fuses it where speed matters.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SwiGLUFFN", "SwiGLUFFNFused"]


class SwiGLUFFN(nn.Module):
    """``w3(silu(x1) * x2)`` with ``x1, x2`` the two halves of ``w12(x)``.

    ``act_layer`` and ``drop`` are accepted for signature compatibility with :class:`Mlp` and ignored.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] | None = None,
        drop: float = 0.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = self._hidden_size(hidden_features or in_features)
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=bias, device=device, dtype=dtype)
        self.w3 = nn.Linear(hidden_features, out_features, bias=bias, device=device, dtype=dtype)

    @staticmethod
    def _hidden_size(hidden_features: int) -> int:
        """The width of ``w12``'s halves and ``w3``'s input for a nominal hidden size (subclasses shrink it)."""
        return hidden_features

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)  # [..., hidden] each
        return self.w3(F.silu(x1) * x2)  # [..., out]


class SwiGLUFFNFused(SwiGLUFFN):
    """SwiGLU whose hidden size is 2/3 of the nominal MLP size rounded up to a multiple of 8 (ViT-g: 6144 -> 4096).

    Same constructor as :class:`SwiGLUFFN`; only the hidden size differs.
    """

    @staticmethod
    def _hidden_size(hidden_features: int) -> int:
        return (int(hidden_features * 2 / 3) + 7) // 8 * 8
