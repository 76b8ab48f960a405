"""The DINOv2 Vision Transformer (Oquab et al. 2023) with registers (Darcet et al. 2024).

Parameter names, construction order (hence state-dict key order), initialisation and the position-embedding
interpolation are kept as in the official DINOv2 code so that the released checkpoints load strictly and give the
same outputs.
Additions: inputs whose sides are not multiples of the patch size are cropped (top-left, one warning),
``get_intermediate_layers`` can return register tokens, ``get_last_selfattention`` returns attention maps, and every
parameter is filled by :meth:`DinoVisionTransformer.init_weights` so the model can be built on the meta device.
"""

import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from dinov2.layers import MemEffAttention, Mlp, NestedTensorBlock, PatchEmbed, SwiGLUFFNFused

__all__ = [
    "BlockChunk",
    "DinoVisionTransformer",
    "init_weights_vit_timm",
    "named_apply",
    "vit_tiny",
    "vit_small",
    "vit_base",
    "vit_large",
    "vit_giant2",
]

logger = logging.getLogger("dinov2")


def named_apply(
    fn: Callable[..., None], module: nn.Module, name: str = "", depth_first: bool = True, include_root: bool = False
) -> nn.Module:
    """Calls ``fn(module=..., name=...)`` on every submodule with its dotted name (children first by default)."""
    if not depth_first and include_root:
        fn(module=module, name=name)
    for child_name, child_module in module.named_children():
        child_name = ".".join((name, child_name)) if name else child_name
        named_apply(fn=fn, module=child_module, name=child_name, depth_first=depth_first, include_root=True)
    if depth_first and include_root:
        fn(module=module, name=name)
    return module


class BlockChunk(nn.ModuleList):
    """A run of consecutive blocks (one FSDP unit), padded at the front with ``nn.Identity`` so that the global
    block index is kept in the state-dict keys (``blocks.<chunk>.<global index>.*``)."""

    def forward(self, x: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
        for b in self:
            x = b(x)
        return x


def _identity_ffn(*args: object, **kwargs: object) -> nn.Module:
    return nn.Identity()


_FFN_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": Mlp,
    "swiglu": SwiGLUFFNFused,
    "swiglufused": SwiGLUFFNFused,
    "identity": _identity_ffn,
}


def _check_arguments(ffn_layer: str, num_register_tokens: int, block_chunks: int) -> None:
    if ffn_layer not in _FFN_LAYERS:
        raise ValueError(f"unknown ffn_layer={ffn_layer!r}; choose one of {sorted(_FFN_LAYERS)}")
    if num_register_tokens < 0:
        raise ValueError(f"num_register_tokens must be >= 0, got {num_register_tokens}")
    if block_chunks < 0:
        raise ValueError(f"block_chunks must be >= 0, got {block_chunks}")


def _drop_path_rates(rate: float, depth: int, uniform: bool) -> list[float]:
    """Stochastic-depth rate of each block: ``rate`` everywhere, or a linear ramp from 0 to ``rate``."""
    if uniform:
        return [rate] * depth
    return torch.linspace(0, rate, depth, device="cpu").tolist()  # CPU even under a meta device context


def _group_blocks(blocks: list[nn.Module], block_chunks: int) -> nn.ModuleList:
    """The blocks as a flat list (``block_chunks`` = 0) or as ``BlockChunk`` FSDP units. Chunk ``c`` is padded with
    Identity placeholders in front so that block ``i`` keeps the state-dict key ``blocks.<c>.<i>``."""
    if block_chunks <= 0:
        return nn.ModuleList(blocks)
    size = len(blocks) // block_chunks
    return nn.ModuleList([BlockChunk([nn.Identity()] * i + blocks[i : i + size]) for i in range(0, len(blocks), size)])


class DinoVisionTransformer(nn.Module):
    """ViT backbone returning the normalised CLS token (``forward``) or all token groups (``forward_features``).

    Token sequence: ``[CLS, register_1..register_R, patch_1..patch_N]``; registers get no position embedding.
    ``img_size`` only sizes ``pos_embed`` (released weights: 518 -> 37x37 grid); other input sizes are served by
    bicubic interpolation of the position embeddings (see :meth:`interpolate_pos_encoding`).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ffn_bias: bool = True,
        proj_bias: bool = True,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        init_values: float | None = None,
        embed_layer: Callable[..., nn.Module] = PatchEmbed,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        block_fn: Callable[..., nn.Module] = NestedTensorBlock,
        ffn_layer: str = "mlp",
        block_chunks: int = 1,
        num_register_tokens: int = 0,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            img_size: input size the position embeddings are made for (grid ``img_size // patch_size``).
            patch_size: patch size in pixels.
            in_chans: number of input channels.
            embed_dim: token dimension D.
            depth: number of blocks.
            num_heads: attention heads per block.
            mlp_ratio: FFN hidden size / D (before the SwiGLU 2/3 rounding).
            qkv_bias, ffn_bias, proj_bias: biases of the qkv, FFN and attention-output Linears.
            drop_path_rate: stochastic depth rate (the last block's rate unless ``drop_path_uniform``).
            drop_path_uniform: every block gets ``drop_path_rate`` instead of a linear ramp from 0.
            init_values: LayerScale init; None or 0 means no LayerScale (no ``ls1``/``ls2`` keys).
            embed_layer: patch embedding class.
            act_layer: FFN activation.
            block_fn: block class.
            ffn_layer: "mlp", "swiglu"/"swiglufused" (same layer) or "identity".
            block_chunks: >0 groups the blocks into that many ``BlockChunk``s (FSDP units); 0 keeps a flat list.
            num_register_tokens: number of register tokens R (>= 0).
            interpolate_antialias: antialias flag of the bicubic position-embedding interpolation.
            interpolate_offset: offset added to the target grid; non-zero selects the scale-factor path.
            device, dtype: where and in which dtype to create the parameters (``"meta"`` for deferred init).
        """
        super().__init__()
        _check_arguments(ffn_layer, num_register_tokens, block_chunks)
        factory = {"device": device, "dtype": dtype} if device is not None or dtype is not None else {}
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        self.num_features = self.embed_dim = embed_dim
        self.num_tokens = 1
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self._warned_crop = False

        self.patch_embed = embed_layer(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, **factory
        )
        num_patches = self.patch_embed.num_patches

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **factory))  # [1, 1, D]
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + self.num_tokens, embed_dim, **factory)
        )  # [1, 1+N0, D]
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim, **factory))  # [1, R, D]
            if num_register_tokens
            else None
        )

        dpr = _drop_path_rates(drop_path_rate, depth, drop_path_uniform)
        blocks_list = [
            block_fn(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                drop_path=dpr[i],
                norm_layer=norm_layer,
                act_layer=act_layer,
                ffn_layer=_FFN_LAYERS[ffn_layer],
                init_values=init_values,
                **factory,
            )
            for i in range(depth)
        ]
        self.chunked_blocks = block_chunks > 0
        self.blocks = _group_blocks(blocks_list, block_chunks)

        self.norm = norm_layer(embed_dim, **factory)
        self.head = nn.Identity()

        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim, **factory))  # [1, D]

        self.init_weights()

    def init_weights(self) -> None:
        """Fills every parameter, so it is safe after ``to_empty()`` on a model built on the meta device.

        Values: pos_embed trunc-normal(0.02), cls/register tokens normal(1e-6), mask token 0, every Linear
        trunc-normal(0.02) with zero bias. LayerNorms, LayerScale (``init_values``) and the patch-embed convolution
        get their own ``reset_parameters``, which restores their construction-time values.
        """
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        named_apply(init_weights_vit_timm, self)

    def _iter_blocks(self) -> Iterator[tuple[int, nn.Module]]:
        """(global index, block) pairs in order, skipping the Identity padding of chunks."""
        if not self.chunked_blocks:
            yield from enumerate(self.blocks)
            return
        i = 0
        for block_chunk in self.blocks:
            for blk in block_chunk[i:]:
                yield i, blk
                i += 1

    def interpolate_pos_encoding(self, x: Tensor, w: int, h: int) -> Tensor:
        """Position embeddings ``[1, 1+N, D]`` for tokens ``x`` ``[B, 1+N, D]`` of an image of height ``w`` and
        width ``h`` pixels (names kept from the official DINOv2 code for keyword callers; they arrive height first).

        Bicubic resampling in float32, cast back to ``x.dtype``. A non-zero ``interpolate_offset`` passes
        scale factors ``(grid + offset) / M`` to ``F.interpolate`` instead of a size: a legacy fix for
        floating-point error in DINO v1 that the released non-register models depend on, so it is kept exactly.
        """
        previous_dtype = x.dtype
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed = pos_embed[:, 0]  # [1, D]
        patch_pos_embed = pos_embed[:, 1:]  # [1, N0, D]
        dim = x.shape[-1]
        w0 = w // self.patch_size
        h0 = h // self.patch_size
        M = int(math.sqrt(N))
        if M * M != N:
            raise ValueError(f"pos_embed holds {N} patch positions, which is not a square grid")
        kwargs: dict[str, object] = {}
        if self.interpolate_offset:
            sx = float(w0 + self.interpolate_offset) / M
            sy = float(h0 + self.interpolate_offset) / M
            kwargs["scale_factor"] = (sx, sy)
        else:
            kwargs["size"] = (w0, h0)
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),  # [1, D, M, M]
            mode="bicubic",
            antialias=self.interpolate_antialias,
            **kwargs,
        )  # [1, D, w0, h0]
        if tuple(patch_pos_embed.shape[-2:]) != (w0, h0):
            raise RuntimeError(
                f"position-embedding interpolation produced a {tuple(patch_pos_embed.shape[-2:])} grid instead of "
                f"{(w0, h0)} (interpolate_offset={self.interpolate_offset}); set interpolate_offset=0.0"
            )
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)  # [1, w0*h0, D]
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)  # [1, 1+N, D]

    def _crop_to_patch_multiple(self, x: Tensor) -> Tensor:
        """Crops ``x`` ``[B, C, H, W]`` to the largest multiple of the patch size, keeping the top-left corner.

        Top-left keeps patch (i, j) at pixels ``[i*p, (i+1)*p)`` and matches what a stride-p convolution (e.g.
        Hugging Face's Dinov2) does with the same input. Warns once per model.
        """
        H, W = x.shape[-2:]
        p = self.patch_size
        if H < p or W < p:
            raise ValueError(f"input size {H}x{W} is smaller than one {p}x{p} patch; resize the image to >= {p}x{p}")
        if H % p == 0 and W % p == 0:
            return x
        new_H, new_W = H // p * p, W // p * p
        if not self._warned_crop:
            warnings.warn(
                f"input size {H}x{W} is not a multiple of the patch size {p}; cropping to {new_H}x{new_W} "
                "(top-left). Resize or pad images to multiples of the patch size to silence this warning.",
                stacklevel=3,
            )
            self._warned_crop = True
        return x[..., :new_H, :new_W]

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Patch tokens (``masks`` ``[B, N]`` True -> mask token), CLS, position embeddings, then registers.

        Returns ``[B, 1+R+N, D]``.
        """
        x = self._crop_to_patch_multiple(x)
        B, _, H, W = x.shape
        x = self.patch_embed(x)  # [B, N, D]
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)  # [B, N, D]
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # [B, 1+N, D]
        x = x + self.interpolate_pos_encoding(x, H, W)
        if self.register_tokens is not None:
            x = torch.cat((x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)  # [B, 1+R+N, D]
        return x

    def _features_dict(self, x: Tensor, masks: Tensor | None) -> dict[str, Tensor | None]:
        x_norm = self.norm(x)  # [B, 1+R+N, D]
        R = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],  # [B, D]
            "x_norm_regtokens": x_norm[:, 1 : R + 1],  # [B, R, D]
            "x_norm_patchtokens": x_norm[:, R + 1 :],  # [B, N, D]
            "x_prenorm": x,  # [B, 1+R+N, D]
            "masks": masks,
        }

    def forward_features_list(
        self, x_list: Sequence[Tensor], masks_list: Sequence[Tensor | None] | None
    ) -> list[dict[str, Tensor | None]]:
        """Features of several batches of different sizes (e.g. global and local crops) in one pass per block."""
        if masks_list is None:
            masks_list = [None] * len(x_list)
        if len(masks_list) != len(x_list):
            raise ValueError(f"got {len(x_list)} inputs but {len(masks_list)} masks; pass one mask (or None) each")
        x = [self.prepare_tokens_with_masks(x, masks) for x, masks in zip(x_list, masks_list)]
        for blk in self.blocks:
            x = blk(x)
        return [self._features_dict(x_i, masks) for x_i, masks in zip(x, masks_list)]

    def forward_features(
        self, x: Tensor | Sequence[Tensor], masks: Tensor | Sequence[Tensor | None] | None = None
    ) -> dict[str, Tensor | None] | list[dict[str, Tensor | None]]:
        """Dict with ``x_norm_clstoken`` [B, D], ``x_norm_regtokens`` [B, R, D], ``x_norm_patchtokens`` [B, N, D],
        ``x_prenorm`` [B, 1+R+N, D] and ``masks``; a list of such dicts for a list input."""
        if isinstance(x, list | tuple):
            return self.forward_features_list(x, masks)
        x = self.prepare_tokens_with_masks(x, masks)
        for blk in self.blocks:
            x = blk(x)
        return self._features_dict(x, masks)

    def _get_intermediate_layers(self, x: Tensor, n: int | Sequence[int] = 1) -> list[Tensor]:
        x = self.prepare_tokens_with_masks(x)
        total_block_len = self.n_blocks
        if isinstance(n, int):
            if not 1 <= n <= total_block_len:
                raise ValueError(f"n={n} must be between 1 and the number of blocks ({total_block_len})")
            blocks_to_take = list(range(total_block_len - n, total_block_len))
        else:
            blocks_to_take = list(n)
            bad = [i for i in blocks_to_take if not 0 <= i < total_block_len]
            if bad:
                raise ValueError(f"block indices {bad} are out of range for a model with {total_block_len} blocks")
        wanted = set(blocks_to_take)
        last_wanted = max(blocks_to_take, default=-1)
        output = []
        for i, blk in self._iter_blocks():
            if i > last_wanted:
                break  # later blocks cannot change the requested outputs
            x = blk(x)
            if i in wanted:
                output.append(x)
        assert len(output) == len(wanted), f"only {len(output)} / {len(wanted)} blocks found"
        return output

    # Names of the two variants in the official DINOv2 code, kept for callers that use them; one walk over
    # (global index, block) serves both layouts.
    _get_intermediate_layers_not_chunked = _get_intermediate_layers
    _get_intermediate_layers_chunked = _get_intermediate_layers

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
        *,
        return_register_tokens: bool = False,
    ) -> tuple[Tensor | tuple[Tensor, ...], ...]:
        """Outputs of the last ``n`` blocks (int) or of the given 0-based blocks (sequence), in block order.

        Each output is the patch tokens ``[B, N, D]`` (``[B, D, H/p, W/p]`` with ``reshape``), or a tuple
        ``(patches, cls [B, D])`` with ``return_class_token``, ``(patches, registers [B, R, D])`` with
        ``return_register_tokens``, or ``(patches, cls, registers)`` with both.
        ``norm`` applies the final LayerNorm to every output.
        """
        outputs = self._get_intermediate_layers(x, n)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        R = self.num_register_tokens
        class_tokens = [out[:, 0] for out in outputs]  # [B, D] each
        register_tokens = [out[:, 1 : 1 + R] for out in outputs]  # [B, R, D] each
        patch_tokens = [out[:, 1 + R :] for out in outputs]  # [B, N, D] each
        if reshape:
            B = x.shape[0]
            H, W = x.shape[-2:]
            grid_h, grid_w = H // self.patch_size, W // self.patch_size
            patch_tokens = [
                out.reshape(B, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous()  # [B, D, H/p, W/p]
                for out in patch_tokens
            ]
        if return_class_token and return_register_tokens:
            return tuple(zip(patch_tokens, class_tokens, register_tokens))
        if return_class_token:
            return tuple(zip(patch_tokens, class_tokens))
        if return_register_tokens:
            return tuple(zip(patch_tokens, register_tokens))
        return tuple(patch_tokens)

    @torch.no_grad()
    def get_last_selfattention(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Softmax attention ``[B, heads, T, T]`` of the last block, ``T = 1 + R + N`` (CLS first, then registers,
        then patches in row-major order); rows sum to 1. Computed with explicit maths, in float32."""
        x = self.prepare_tokens_with_masks(x, masks)
        blocks = [blk for _, blk in self._iter_blocks()]
        for blk in blocks[:-1]:
            x = blk(x)
        return blocks[-1].get_attention_map(x)

    def forward(self, *args: object, is_training: bool = False, **kwargs: object) -> object:
        """Normalised CLS token ``[B, D]`` (through ``head``, an Identity); the ``forward_features`` dict (or list
        of dicts) with ``is_training=True``."""
        ret = self.forward_features(*args, **kwargs)
        if is_training:
            return ret
        return self.head(ret["x_norm_clstoken"])


def init_weights_vit_timm(module: nn.Module, name: str = "") -> None:
    """Linear: trunc-normal(0.02) weight, zero bias. Other leaves with parameters (LayerNorm, Conv2d, LayerScale,
    ...) get their own ``reset_parameters`` so nothing is left unset after ``to_empty``."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False)):
        module.reset_parameters()


def _vit(size: dict[str, int], patch_size: int, num_register_tokens: int, kwargs: dict) -> DinoVisionTransformer:
    """The factories' shared body; caller kwargs override the size defaults (e.g. ``depth=2`` for a quick test)."""
    vit_kwargs: dict[str, object] = dict(
        patch_size=patch_size,
        **size,
        mlp_ratio=4,
        block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
        num_register_tokens=num_register_tokens,
    )
    vit_kwargs.update(kwargs)
    return DinoVisionTransformer(**vit_kwargs)


def vit_tiny(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: object) -> DinoVisionTransformer:
    """ViT-Ti (D 192, 12 blocks, 3 heads): not released, a small model for CPU runs and tests."""
    return _vit(dict(embed_dim=192, depth=12, num_heads=3), patch_size, num_register_tokens, kwargs)


def vit_small(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: object) -> DinoVisionTransformer:
    """ViT-S (D 384, 12 blocks, 6 heads)."""
    return _vit(dict(embed_dim=384, depth=12, num_heads=6), patch_size, num_register_tokens, kwargs)


def vit_base(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: object) -> DinoVisionTransformer:
    """ViT-B (D 768, 12 blocks, 12 heads)."""
    return _vit(dict(embed_dim=768, depth=12, num_heads=12), patch_size, num_register_tokens, kwargs)


def vit_large(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: object) -> DinoVisionTransformer:
    """ViT-L (D 1024, 24 blocks, 16 heads)."""
    return _vit(dict(embed_dim=1024, depth=24, num_heads=16), patch_size, num_register_tokens, kwargs)


def vit_giant2(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: object) -> DinoVisionTransformer:
    """ViT-g (D 1536, 40 blocks, 24 heads; head dim 64). The released weights use ``ffn_layer="swiglufused"``."""
    return _vit(dict(embed_dim=1536, depth=40, num_heads=24), patch_size, num_register_tokens, kwargs)
