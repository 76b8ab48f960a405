"""Monocular depth on the released backbones: linear (``_ld``) and DPT (``_dd``) heads, NYU or KITTI weights.

The linear head's depth range follows the weights (NYU 0.001-10 m, KITTI 0.001-80 m), the range each head was
trained with, so its depth bins come out in metres on the right scale (see README).
"""

from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

from ._heads import load_head_weights, parse_weights
from .depth import BNHead, DepthEncoderDecoder, DPTHead
from .variants import VARIANTS, entrypoint

__all__ = [
    "Weights",
    "dinov2_vitb14_dd",
    "dinov2_vitb14_ld",
    "dinov2_vitb14_reg_dd",
    "dinov2_vitb14_reg_ld",
    "dinov2_vitg14_dd",
    "dinov2_vitg14_ld",
    "dinov2_vitg14_reg_dd",
    "dinov2_vitg14_reg_ld",
    "dinov2_vitl14_dd",
    "dinov2_vitl14_ld",
    "dinov2_vitl14_reg_dd",
    "dinov2_vitl14_reg_ld",
    "dinov2_vits14_dd",
    "dinov2_vits14_ld",
    "dinov2_vits14_reg_dd",
    "dinov2_vits14_reg_ld",
]


class Weights(Enum):
    NYU = "NYU"
    KITTI = "KITTI"


# 0-based blocks whose (un-normalised) outputs feed the 4-level heads; the 1-level linear head uses the last one
_OUT_INDEX: dict[str, list[int]] = {
    "vit_small": [2, 5, 8, 11],
    "vit_base": [2, 5, 8, 11],
    "vit_large": [4, 11, 17, 23],
    "vit_giant2": [9, 19, 29, 39],
}


def _get_depth_range(pretrained: bool, weights: Weights | str = Weights.NYU) -> tuple[float, float]:
    """(min, max) depth in metres of the released heads: NYU 10 m, KITTI 80 m (10 m for random heads)."""
    if not pretrained:
        return (0.001, 10.0)
    return (0.001, 80.0) if parse_weights(weights, Weights) == Weights.KITTI else (0.001, 10.0)


def _out_index(arch_name: str, layers: int) -> list[int]:
    if arch_name not in _OUT_INDEX:
        raise ValueError(f"Unknown arch_name {arch_name!r}; use one of {sorted(_OUT_INDEX)}")
    if layers not in (1, 4):
        raise ValueError(f"layers must be 1 or 4 (the released heads), got {layers!r}")
    return list(_OUT_INDEX[arch_name]) if layers == 4 else [_OUT_INDEX[arch_name][-1]]


def _make_dinov2_linear_depth_head(*, embed_dim: int, layers: int, min_depth: float, max_depth: float) -> BNHead:
    """Linear head: 256 uniform bins, "linear" normalisation, x4 upsampling, input 2 * D per block (CLS added)."""
    in_index = [0] if layers == 1 else [0, 1, 2, 3]
    return BNHead(
        classify=True,
        n_bins=256,
        bins_strategy="UD",
        norm_strategy="linear",
        upsample=4,
        in_channels=[embed_dim] * len(in_index),
        in_index=in_index,
        input_transform="resize_concat",
        channels=embed_dim * len(in_index) * 2,
        align_corners=False,
        min_depth=min_depth,
        max_depth=max_depth,
        loss_decode=(),
    )


def _make_dinov2_dpt_depth_head(*, embed_dim: int, min_depth: float, max_depth: float) -> DPTHead:
    """DPT head: 256 features, project readout, post-process channels [D/8, D/4, D/2, D]."""
    return DPTHead(
        in_channels=[embed_dim] * 4,
        channels=256,
        embed_dims=embed_dim,
        post_process_channels=[embed_dim // 2 ** (3 - i) for i in range(4)],
        readout_type="project",
        min_depth=min_depth,
        max_depth=max_depth,
        loss_decode=(),
    )


def _build_depther(
    *,
    kind: str,
    arch_name: str = "vit_large",
    layers: int = 4,
    pretrained: bool = True,
    weights: Weights | str = Weights.NYU,
    depth_range: Sequence[float] | None = None,
    num_register_tokens: int = 0,
    interpolate_antialias: bool = False,
    interpolate_offset: float = 0.1,
    head_weights: str | None = None,
    **kwargs: Any,
) -> DepthEncoderDecoder:
    from .backbones import _make_dinov2_model
    from .utils import _DINOV2_BASE_URL, _make_dinov2_model_name

    weights = parse_weights(weights, Weights)
    out_index = _out_index(arch_name, layers)
    if pretrained and num_register_tokens and not head_weights:
        raise RuntimeError(
            "No depth head weights were released for the register backbones; build it with pretrained=False "
            "(random backbone and head), or pass your own head file with head_weights=<path or URL>"
        )
    min_depth, max_depth = (
        _get_depth_range(pretrained or bool(head_weights), weights) if depth_range is None else tuple(depth_range)
    )
    if not 0 < min_depth < max_depth:
        raise ValueError(f"depth_range must be (min, max) with 0 < min < max, got {(min_depth, max_depth)}")
    backbone = _make_dinov2_model(
        arch_name=arch_name,
        pretrained=pretrained,
        num_register_tokens=num_register_tokens,
        interpolate_antialias=interpolate_antialias,
        interpolate_offset=interpolate_offset,
        **kwargs,
    )
    if kind == "linear":
        head = _make_dinov2_linear_depth_head(
            embed_dim=backbone.embed_dim, layers=layers, min_depth=min_depth, max_depth=max_depth
        )
    else:
        head = _make_dinov2_dpt_depth_head(embed_dim=backbone.embed_dim, min_depth=min_depth, max_depth=max_depth)
    model = DepthEncoderDecoder(
        backbone, head, out_index=out_index, patch_size=backbone.patch_size, norm=False, return_class_token=True
    )
    if head_weights:  # a head file of the user's, whether or not the backbone is pretrained
        load_head_weights(model.decode_head, head_weights, prefix="decode_head.")
    elif pretrained:
        name = _make_dinov2_model_name(arch_name, backbone.patch_size)
        head_name = f"linear{layers if layers == 4 else ''}" if kind == "linear" else "dpt"
        url = f"{_DINOV2_BASE_URL}/{name}/{name}_{weights.value.lower()}_{head_name}_head.pth"
        load_head_weights(model.decode_head, url, prefix="decode_head.")
    return model


def _make_dinov2_linear_depther(**kwargs: Any) -> DepthEncoderDecoder:
    """Backbone + linear depth head (``layers`` = 1 or 4 blocks); ``depth_range`` overrides the weights' range."""
    return _build_depther(kind="linear", **kwargs)


def _make_dinov2_dpt_depther(**kwargs: Any) -> DepthEncoderDecoder:
    """Backbone + DPT depth head on 4 blocks; ``depth_range`` overrides the weights' range."""
    return _build_depther(kind="dpt", **{**kwargs, "layers": 4})


def _linear_depther(name: str) -> Callable[..., DepthEncoderDecoder]:
    registers = VARIANTS[name].registers  # no released head: random unless head_weights= is given
    return entrypoint(
        VARIANTS[name], _make_dinov2_linear_depther, "_ld", "Linear depth estimator on DINOv2 {} (NYU or KITTI head).",
        layers=4, pretrained=not registers, weights=Weights.NYU,
    )  # fmt: skip


def _dpt_depther(name: str) -> Callable[..., DepthEncoderDecoder]:
    registers = VARIANTS[name].registers
    return entrypoint(
        VARIANTS[name], _make_dinov2_dpt_depther, "_dd", "DPT depth estimator on DINOv2 {} (NYU or KITTI head).",
        pretrained=not registers, weights=Weights.NYU,
    )  # fmt: skip


dinov2_vits14_ld = _linear_depther("vits14")
dinov2_vitb14_ld = _linear_depther("vitb14")
dinov2_vitl14_ld = _linear_depther("vitl14")
dinov2_vitg14_ld = _linear_depther("vitg14")
dinov2_vits14_dd = _dpt_depther("vits14")
dinov2_vitb14_dd = _dpt_depther("vitb14")
dinov2_vitl14_dd = _dpt_depther("vitl14")
dinov2_vitg14_dd = _dpt_depther("vitg14")
dinov2_vits14_reg_ld = _linear_depther("vits14_reg")
dinov2_vitb14_reg_ld = _linear_depther("vitb14_reg")
dinov2_vitl14_reg_ld = _linear_depther("vitl14_reg")
dinov2_vitg14_reg_ld = _linear_depther("vitg14_reg")
dinov2_vits14_reg_dd = _dpt_depther("vits14_reg")
dinov2_vitb14_reg_dd = _dpt_depther("vitb14_reg")
dinov2_vitl14_reg_dd = _dpt_depther("vitl14_reg")
dinov2_vitg14_reg_dd = _dpt_depther("vitg14_reg")
