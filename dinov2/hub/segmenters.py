"""Semantic segmentation on the released backbones with the released linear heads (``dinov2_vit*14_ls``).

The heads are plain PyTorch modules (no mmcv/mmseg) that load the released weights. Facts of the official
configs (``{name}_{ade20k|voc2012}_{linear|ms}_config.py``):

* "linear": final-norm patch maps of the last 4 blocks, of which the head uses the last one (``in_index=[3]``);
  BatchNorm + 1x1 conv; images resized to a short side of 512, then a 512x512 sliding window with stride 341.
* "ms": the last 4 blocks concatenated (4 * D channels) and multi-scale + flip test-time augmentation with
  the ratios ``_MS_RATIOS``.
"""

from collections.abc import Callable
from enum import Enum
from typing import Any, Literal

from ._heads import load_head_weights, parse_weights
from .segmentation import BNHead, SegmentationEncoderDecoder
from .variants import VARIANTS, entrypoint

__all__ = ["Weights", "dinov2_vitb14_ls", "dinov2_vitg14_ls", "dinov2_vitl14_ls", "dinov2_vits14_ls"]


class Weights(Enum):
    ADE20K = "ADE20K"
    VOC2012 = "VOC2012"


_NUM_CLASSES = {Weights.ADE20K: 150, Weights.VOC2012: 21}

# The last 4 blocks (0-based), the backbone out_indices of the official configs
_OUT_INDEX: dict[str, list[int]] = {
    "vit_small": [8, 9, 10, 11],
    "vit_base": [8, 9, 10, 11],
    "vit_large": [20, 21, 22, 23],
    "vit_giant2": [36, 37, 38, 39],
}

# Test-time settings per head type. "linear": the official ViT-B/14 ADE20K linear config (short side 512,
# window 512, stride 341, one scale, no flip). "ms": img_ratios [1.0, 1.32, 1.73, 2.28, 3.0] with flip=True, and
# a 640 short side with 640 windows at stride 320, as found in public copies of the official *_ms_config.py
# files (zshn25/DINOv2_mmseg and configs derived from them), not read from the official files themselves.
_MS_RATIOS = (1.0, 1.32, 1.73, 2.28, 3.0)
_TEST_SETTINGS: dict[str, dict[str, Any]] = {
    "linear": {"short_side": 512, "crop_size": 512, "stride": 341, "scales": (1.0,), "flip": False},
    "ms": {"short_side": 640, "crop_size": 640, "stride": 320, "scales": _MS_RATIOS, "flip": True},
}


def _make_dinov2_linear_segmentation_head(*, embed_dim: int, mode: Literal["linear", "ms"], num_classes: int) -> BNHead:
    """BNHead on the last block ("linear", D channels) or on the last 4 blocks ("ms", 4 * D channels)."""
    in_index = [3] if mode == "linear" else [0, 1, 2, 3]
    return BNHead(
        in_channels=[embed_dim] * len(in_index),
        channels=embed_dim * len(in_index),
        num_classes=num_classes,
        in_index=in_index,
        dropout_ratio=0.0,
        align_corners=False,
    )


def _make_dinov2_segmenter(
    *,
    arch_name: str = "vit_large",
    weights: Weights | str = Weights.ADE20K,
    mode: Literal["linear", "ms"] = "linear",
    pretrained: bool = True,
    head_weights: str | None = None,
    **kwargs: Any,
) -> SegmentationEncoderDecoder:
    """Backbone (random too when not pretrained) + linear segmentation head (from ``head_weights``, a path or URL,
    when given, else the released file of ``weights`` and ``mode``); ``kwargs`` go to the ViT."""
    from .backbones import _make_dinov2_model
    from .utils import _DINOV2_BASE_URL, _make_dinov2_model_name

    weights = parse_weights(weights, Weights)
    if mode not in _TEST_SETTINGS:
        raise ValueError(f"mode must be 'linear' or 'ms', got {mode!r}")
    if arch_name not in _OUT_INDEX:
        raise ValueError(f"Unknown arch_name {arch_name!r}; use one of {sorted(_OUT_INDEX)}")
    backbone = _make_dinov2_model(arch_name=arch_name, pretrained=pretrained, **kwargs)
    head = _make_dinov2_linear_segmentation_head(
        embed_dim=backbone.embed_dim, mode=mode, num_classes=_NUM_CLASSES[weights]
    )
    model = SegmentationEncoderDecoder(
        backbone,
        head,
        out_index=_OUT_INDEX[arch_name],
        patch_size=backbone.patch_size,
        mode="slide",
        **_TEST_SETTINGS[mode],
    )
    if head_weights:  # a head file of the user's, whether or not the backbone is pretrained
        load_head_weights(model.decode_head, head_weights, prefix="decode_head.")
    elif pretrained:
        name = _make_dinov2_model_name(arch_name, backbone.patch_size)
        url = f"{_DINOV2_BASE_URL}/{name}/{name}_{weights.value.lower()}_{mode}_head.pth"
        load_head_weights(model.decode_head, url, prefix="decode_head.")
    return model


def _segmenter(name: str) -> Callable[..., SegmentationEncoderDecoder]:
    return entrypoint(
        VARIANTS[name], _make_dinov2_segmenter, "_ls",
        "Linear semantic segmenter (ADE20K: 150 classes, VOC2012: 21) on DINOv2 {}.",
        weights=Weights.ADE20K, mode="linear", pretrained=True,
    )  # fmt: skip


dinov2_vits14_ls = _segmenter("vits14")
dinov2_vitb14_ls = _segmenter("vitb14")
dinov2_vitl14_ls = _segmenter("vitl14")
dinov2_vitg14_ls = _segmenter("vitg14")
