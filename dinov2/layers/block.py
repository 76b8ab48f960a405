"""Pre-norm transformer block with LayerScale and batch-subset stochastic depth.

In ``Block``, for drop rates above 0.1 the residual branch runs only on a random subset of the batch and is
added back with weight ``B / subset`` (same expectation as DropPath, less compute); for smaller positive rates
classic per-sample DropPath is used. The FFN branch uses its own ``drop_path2``, with the same rate as
``drop_path1``. ``NestedTensorBlock`` also accepts a list of token tensors of different lengths (multi-crop).
Without autograd (inference, EMA teacher) each LayerScale product is fused into its residual addition.
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .attention import Attention
from .drop_path import DropPath
from .layer_scale import LayerScale
from .mlp import Mlp

__all__ = [
    "Block",
    "NestedTensorBlock",
    "drop_add_residual_stochastic_depth",
    "get_branges_scales",
    "add_residual",
    "drop_add_residual_stochastic_depth_list",
]

# Rates above this use the batch-subset path in Block.forward, below it per-sample masks (the official threshold,
# kept so that training draws the same random numbers).
_SUBSET_DROP_MIN_RATIO = 0.1


def drop_add_residual_stochastic_depth(
    x: Tensor, residual_func: Callable[[Tensor], Tensor], sample_drop_ratio: float = 0.0
) -> Tensor:
    """``x`` plus ``residual_func`` computed on a random ``max(int(B * (1 - ratio)), 1)`` rows, scaled by B/subset.

    The other rows are returned unchanged; the residual is never computed for them.
    """
    brange, scale = get_branges_scales(x, sample_drop_ratio)
    residual = residual_func(x[brange])  # [subset, ...]
    return add_residual(x, brange, residual, scale)


def get_branges_scales(x: Tensor, sample_drop_ratio: float = 0.0) -> tuple[Tensor, float]:
    """Random row indices ``[subset]`` of ``x`` (on ``x.device``) and the rescaling factor ``B / subset``."""
    b = x.shape[0]
    sample_subset_size = max(int(b * (1 - sample_drop_ratio)), 1)
    brange = torch.randperm(b, device=x.device)[:sample_subset_size]  # [subset]
    return brange, b / sample_subset_size


def add_residual(x: Tensor, brange: Tensor, residual: Tensor, residual_scale_factor: float) -> Tensor:
    """Out-of-place ``x[brange] += residual * residual_scale_factor`` (autograd-friendly). Returns a fresh tensor,
    not a view: an FSDP2 unit must not return a view (an in-place op on it would skip FSDP's backward hook)."""
    return torch.index_add(x, 0, brange, residual.to(dtype=x.dtype), alpha=residual_scale_factor)  # [B, N, D]


def _add_scaled_residual(
    x: Tensor, residual: Tensor, layer_scale: nn.Module, inplace: bool, scratch: Tensor | None = None
) -> Tensor:
    """``x + layer_scale(residual)`` in one pass when ``layer_scale`` is a :class:`LayerScale` (``addcmul``: no
    ``residual * gamma`` temporary; the fused multiply-add may differ from two roundings by 1 ulp).

    ``inplace`` writes into ``x``: only for tensors the caller owns, without autograd, and only when the result
    keeps ``x``'s dtype (an fp32 residual stream under bf16 autocast does). ``scratch``, a dead buffer the caller
    owns, of ``x``'s shape, receives the result instead of a new tensor (unless ``inplace``) and holds the exact
    upcast of a lower-precision ``residual``, which ``addcmul`` would otherwise copy into a temporary.
    """
    if not isinstance(layer_scale, LayerScale):
        residual = layer_scale(residual)
        return x.add_(residual) if inplace and torch.result_type(x, residual) == x.dtype else x + residual
    gamma = layer_scale.gamma
    out_dtype = torch.promote_types(torch.result_type(x, residual), gamma.dtype)
    out = x if inplace and out_dtype == x.dtype else None
    if scratch is not None and scratch.dtype == out_dtype and scratch.shape == x.shape == residual.shape:
        if residual.dtype != out_dtype:
            residual = scratch.copy_(residual)  # [B, N, D]
        out = scratch if out is None else out
    return torch.addcmul(x, residual, gamma) if out is None else torch.addcmul(x, residual, gamma, out=out)


def drop_add_residual_stochastic_depth_list(
    x_list: Sequence[Tensor], residual_func: Callable[[Tensor], Tensor], sample_drop_ratio: float = 0.0
) -> list[Tensor]:
    """:func:`drop_add_residual_stochastic_depth` applied to each tensor with its own random subset."""
    return [drop_add_residual_stochastic_depth(x, residual_func, sample_drop_ratio) for x in x_list]


class Block(nn.Module):
    """``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``, each residual with stochastic depth."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values: float | Tensor | None = None,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        attn_class: Callable[..., nn.Module] = Attention,
        ffn_layer: Callable[..., nn.Module] = Mlp,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype} if device is not None or dtype is not None else {}
        self.norm1 = norm_layer(dim, **factory)
        self.attn = attn_class(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
            **factory,
        )
        self.ls1 = LayerScale(dim, init_values=init_values, **factory) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

        self.norm2 = norm_layer(dim, **factory)
        self.mlp = ffn_layer(
            in_features=dim,
            hidden_features=int(dim * mlp_ratio),
            act_layer=act_layer,
            drop=drop,
            bias=ffn_bias,
            **factory,
        )
        self.ls2 = LayerScale(dim, init_values=init_values, **factory) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

        self.sample_drop_ratio = drop_path

    def attn_residual_func(self, x: Tensor) -> Tensor:
        return self.ls1(self.attn(self.norm1(x)))

    def ffn_residual_func(self, x: Tensor) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def _forward_residuals(self, x: Tensor, subset_min_ratio: float) -> Tensor:
        ratio = self.sample_drop_ratio
        if self.training and ratio > subset_min_ratio:
            x = drop_add_residual_stochastic_depth(x, self.attn_residual_func, ratio)
            return drop_add_residual_stochastic_depth(x, self.ffn_residual_func, ratio)
        if self.training and ratio > 0.0:
            x = x + self.drop_path1(self.attn_residual_func(x))
            return x + self.drop_path2(self.ffn_residual_func(x))
        if not torch.is_grad_enabled():
            return self._forward_no_grad(x)
        x = x + self.attn_residual_func(x)
        return x + self.ffn_residual_func(x)

    def _forward_no_grad(self, x: Tensor) -> Tensor:
        """The plain residuals with fused LayerScale. Each ``nn.LayerNorm`` output is dead once its branch has read
        it, so it serves as scratch: the first residual's result goes there, and the second addition goes in place
        into that; the block never writes into its input (``get_intermediate_layers`` keeps it)."""
        h = self.norm1(x)  # [B, N, D]
        x = _add_scaled_residual(x, self.attn(h), self.ls1, inplace=False, scratch=self._scratch(self.norm1, h))
        h = self.norm2(x)  # [B, N, D]
        return _add_scaled_residual(x, self.mlp(h), self.ls2, inplace=True, scratch=self._scratch(self.norm2, h))

    @staticmethod
    def _scratch(norm: nn.Module, out: Tensor) -> Tensor | None:
        """``out`` when ``norm`` is a plain LayerNorm, whose output is always a fresh contiguous tensor."""
        return out if type(norm) is nn.LayerNorm and out.is_contiguous() else None

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_residuals(x, _SUBSET_DROP_MIN_RATIO)

    def get_attention_map(self, x: Tensor) -> Tensor:
        """Softmax attention ``[B, heads, N, N]`` of this block for its input tokens ``x`` ``[B, N, D]``."""
        return self.attn.get_attention_map(self.norm1(x))


class NestedTensorBlock(Block):
    """:class:`Block` that also takes a list of ``[B_i, N_i, D]`` tensors (e.g. global and local crops).

    Each tensor goes through the block on its own, which equals concatenating them with a block-diagonal
    attention mask (no token attends across tensors or samples). In training the list path uses batch-subset
    stochastic depth for any positive rate, with one random subset per tensor.
    """

    def forward_nested(self, x_list: Sequence[Tensor]) -> list[Tensor]:
        return [self._forward_residuals(x, 0.0) for x in x_list]

    def forward(self, x_or_x_list: Tensor | Sequence[Tensor]) -> Tensor | list[Tensor]:
        if isinstance(x_or_x_list, Tensor):
            return super().forward(x_or_x_list)
        if isinstance(x_or_x_list, list | tuple):
            return self.forward_nested(x_or_x_list)
        raise TypeError(f"expected a Tensor or a list of Tensors, got {type(x_or_x_list).__name__}")
