"""``DepthEncoderDecoder``: a ViT backbone plus a depth decode head, with whole-image and sliding-window inference."""

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .decode_heads import DepthBaseDecodeHead
from .ops import center_pad, resize, sliding_window_inference

__all__ = ["DepthEncoderDecoder", "add_prefix"]


def add_prefix(inputs: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Copy of ``inputs`` with every key written ``f"{prefix}.{key}"`` (for loss and log dictionaries)."""
    return {f"{prefix}.{name}": value for name, value in inputs.items()}


class DepthEncoderDecoder(nn.Module):
    """Backbone + depth head; the state dict holds ``backbone.*`` and ``decode_head.*``, the released layout.

    With ``out_index``, ``extract_feat`` zero-pads the image (evenly on both sides) to a multiple of
    ``patch_size`` and takes the un-normalised outputs of the blocks in ``out_index`` with their CLS tokens; the
    backbone itself is left unmodified (no patched ``forward``, no hooks). Without ``out_index`` the backbone is
    called as is and must return what the head expects.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: DepthBaseDecodeHead,
        *,
        out_index: Sequence[int] | None = None,
        patch_size: int | None = None,
        norm: bool = False,
        return_class_token: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.align_corners = decode_head.align_corners
        self.out_index = list(out_index) if out_index is not None else None
        self.norm = norm
        self.return_class_token = return_class_token
        self.patch_size = patch_size

    def extract_feat(self, img: torch.Tensor) -> Sequence[Any]:
        """Backbone features for the head: per block ``(patch_map [B, D, h, w], cls [B, D])``."""
        if self.patch_size is not None:
            img = center_pad(img, self.patch_size)  # [B, 3, H', W'] with H', W' multiples of the patch size
        if self.out_index is None:
            return self.backbone(img)
        return self.backbone.get_intermediate_layers(
            img, n=self.out_index, reshape=True, return_class_token=self.return_class_token, norm=self.norm
        )

    def encode_decode(
        self,
        img: torch.Tensor,
        img_metas: Sequence[Mapping[str, Any]] | None = None,
        rescale: bool = True,
        size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Depth clamped to ``[min_depth, max_depth]``, resized to ``size``, the meta ``ori_shape`` or the input."""
        out = self.decode_head.forward_test(self.extract_feat(img), img_metas)  # [B, 1, h, w]
        out = torch.clamp(out, min=self.decode_head.min_depth, max=self.decode_head.max_depth)
        if rescale:
            if size is None:
                size = img_metas[0]["ori_shape"][:2] if img_metas else img.shape[2:]
            out = resize(out, size=size, mode="bilinear", align_corners=self.align_corners)
        return out

    def whole_inference(
        self,
        img: torch.Tensor,
        img_meta: Sequence[Mapping[str, Any]] | None = None,
        rescale: bool = True,
        size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """One pass over the whole image -> ``[B, 1, H, W]`` (input size unless ``size``/meta say otherwise)."""
        return self.encode_decode(img, img_meta, rescale, size=size)

    def slide_inference(
        self,
        img: torch.Tensor,
        img_meta: Sequence[Mapping[str, Any]] | None = None,
        rescale: bool = True,
        *,
        crop_size: int | Sequence[int],
        stride: int | Sequence[int],
    ) -> torch.Tensor:
        """Average of overlapping ``crop_size`` windows every ``stride`` pixels -> ``[B, 1, H, W]``."""
        preds = sliding_window_inference(
            lambda crop: self.encode_decode(crop, None, rescale=True, size=crop.shape[2:]),
            img,
            out_channels=1,
            crop_size=crop_size,
            stride=stride,
        )  # [B, 1, H, W]
        if rescale and img_meta:
            preds = resize(preds, size=img_meta[0]["ori_shape"][:2], mode="bilinear", align_corners=self.align_corners)
        return preds

    def inference(
        self,
        img: torch.Tensor,
        img_meta: Sequence[Mapping[str, Any]] | None = None,
        rescale: bool = True,
        size: Sequence[int] | None = None,
        mode: Literal["whole", "slide"] = "whole",
        *,
        crop_size: int | Sequence[int] | None = None,
        stride: int | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Whole or sliding-window inference, un-flipped when the meta says the input was flipped."""
        if img_meta:
            shapes = {tuple(meta["ori_shape"]) for meta in img_meta}
            if len(shapes) != 1:
                raise ValueError(f"All images of a batch must share ori_shape, got {sorted(shapes)}")
        if mode == "whole":
            out = self.whole_inference(img, img_meta, rescale, size=size)
        elif mode == "slide":
            if crop_size is None or stride is None:
                raise ValueError("mode='slide' needs crop_size and stride, e.g. crop_size=518, stride=345")
            out = self.slide_inference(img, img_meta, rescale, crop_size=crop_size, stride=stride)
        else:
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        if img_meta and img_meta[0].get("flip", False):
            direction = img_meta[0].get("flip_direction", "horizontal")
            if direction not in ("horizontal", "vertical"):
                raise ValueError(f"flip_direction must be 'horizontal' or 'vertical', got {direction!r}")
            out = out.flip(dims=(3,) if direction == "horizontal" else (2,))
        return out

    def simple_test(
        self, img: torch.Tensor, img_meta: Sequence[Mapping[str, Any]] | None = None, rescale: bool = True
    ) -> list[np.ndarray]:
        """Whole-image inference as a list of ``[1, H, W]`` numpy arrays, one per image (mmcv test API)."""
        depth = self.inference(img, img_meta, rescale)
        return list(depth.detach().cpu().numpy())

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Depth in metres ``[B, 1, H, W]`` at the input size (whole-image inference).

        The hub model has no losses (mmcv's ``forward`` would run a training step), so calling it predicts depth.
        """
        return self.whole_inference(img, None, rescale=True)
