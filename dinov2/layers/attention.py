"""Multi-head self-attention through ``torch.nn.functional.scaled_dot_product_attention``.

``Attention`` and ``MemEffAttention`` share one parameter layout (``qkv``, ``proj``), so released checkpoints load
into either. ``MemEffAttention`` uses xFormers only when it is installed *and* the tensors are on CUDA (the
xFormers kernels have no CPU implementation). Attention maps, which SDPA never returns, come from
:meth:`Attention.get_attention_map`.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .config import xformers_available

__all__ = ["Attention", "MemEffAttention"]


def _use_xformers(x: Tensor) -> bool:
    return x.is_cuda and xformers_available()


def _sdpa_backend(q: Tensor) -> contextlib.AbstractContextManager:
    """On CPU, SDPA's flash kernel in bf16/fp16 is 2-3x slower than its math path (measured for ViT sequence
    lengths 5-50, forward + backward; ``scripts/benchmark_train.py``), so low precision uses the math path there."""
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


class Attention(nn.Module):
    """Self-attention over ``[B, N, D]`` tokens with ``num_heads`` heads of size ``D / num_heads``.

    ``fused_attn=False`` switches to the explicit softmax(QK^T / sqrt(d)) V path; both paths give the same result
    (tested), the explicit one is there for debugging and for attention maps.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.fused_attn = True
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias, device=device, dtype=dtype)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)  # [B, N, 3, H, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, d] each
        return q, k, v

    def _attend(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x)
        dropout_p = self.attn_drop if self.training else 0.0
        if self.fused_attn:
            with _sdpa_backend(q):
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
                )  # [B, H, N, d]
        else:
            attn = self._softmax_attention(q, k, attn_mask=attn_mask, is_causal=is_causal)  # [B, H, N, N]
            out = F.dropout(attn, p=dropout_p) @ v  # [B, H, N, d]
        out = out.transpose(1, 2).reshape(B, N, C)  # [B, N, D]
        return self.proj_drop(self.proj(out))

    def _softmax_attention(
        self, q: Tensor, k: Tensor, *, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [B, H, N, N]
        if is_causal:
            N = q.shape[-2]
            causal = torch.ones(N, N, dtype=torch.bool, device=q.device).tril()  # [N, N]
            attn = attn.masked_fill(~causal, float("-inf"))
        if attn_mask is not None:
            attn = attn.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else attn + attn_mask
        return attn.softmax(dim=-1)

    def forward(self, x: Tensor, is_causal: bool = False) -> Tensor:
        return self._attend(x, is_causal=is_causal)

    @torch.no_grad()
    def get_attention_map(self, x: Tensor) -> Tensor:
        """Softmax attention weights ``[B, heads, N, N]`` for the (already normalised) input ``x``; rows sum to 1."""
        q, k, _ = self._qkv(x)
        return self._softmax_attention(q.float(), k.float())


class MemEffAttention(Attention):
    """:class:`Attention` that also accepts an ``attn_bias``.

    ``attn_bias`` may be a torch mask (boolean, True = attend, or additive float, broadcastable to
    ``[B, heads, N, N]``), which goes to SDPA, or an xFormers ``AttentionBias`` (e.g. ``BlockDiagonalMask``), which
    needs xFormers and CUDA tensors.
    """

    def forward(self, x: Tensor, attn_bias: object | None = None) -> Tensor:
        if _use_xformers(x):
            return self._xformers_attend(x, attn_bias)
        if attn_bias is not None and not isinstance(attn_bias, Tensor):
            raise TypeError(
                f"attn_bias of type {type(attn_bias).__name__} needs xFormers and CUDA tensors (input is on "
                f"{x.device}); pass a boolean or float torch.Tensor mask instead"
            )
        return self._attend(x, attn_mask=attn_bias)

    def _xformers_attend(self, x: Tensor, attn_bias: object | None) -> Tensor:
        from xformers.ops import memory_efficient_attention

        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)  # [B, N, 3, H, d]
        q, k, v = qkv.unbind(2)  # [B, N, H, d] each
        dropout_p = self.attn_drop if self.training else 0.0
        out = memory_efficient_attention(q, k, v, attn_bias=attn_bias, p=dropout_p)  # [B, N, H, d]
        out = out.reshape(B, N, C)  # [B, N, D]
        return self.proj_drop(self.proj(out))
