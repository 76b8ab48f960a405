"""Backbone + linear segmentation head with the released heads' test-time procedure (no mmseg)."""

import logging
import time
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from dinov2.hub.depth.ops import center_pad, resize, sliding_window_inference

from .decode_heads import BNHead

__all__ = ["SegmentationEncoderDecoder", "resize_short_side"]

logger = logging.getLogger("dinov2")


def resize_short_side(img: torch.Tensor, short_side: int) -> torch.Tensor:
    """Bilinear resize so that the shorter side is ``short_side`` (mmcv ``imrescale`` size rounding)."""
    H, W = img.shape[2:]
    factor = short_side / min(H, W)
    size = (int(H * factor + 0.5), int(W * factor + 0.5))
    if size == (H, W):
        return img
    return resize(img, size=size, mode="bilinear", align_corners=False)  # [B, C, H', W']


class SegmentationEncoderDecoder(nn.Module):
    """Segmenter returned by ``dinov2_vit*14_ls``; its state dict is ``backbone.*`` plus ``decode_head.*``.

    Test-time procedure of the released configs: for every ratio ``r`` in ``scales`` the image is resized so its
    short side is ``int(short_side * r)`` (skipped when ``short_side`` is None), optionally flipped, predicted
    with a sliding window (``mode="slide"``) or in one pass (``mode="whole"``), resized back to the input size,
    turned into probabilities and averaged. Every backbone pass zero-pads its input to a multiple of the patch
    size and takes the final-norm patch maps of the blocks in ``out_index`` (no CLS token).
    The attributes ``scales``, ``flip``, ``mode``, ``short_side``, ``crop_size`` and ``stride`` may be changed
    after construction (e.g. fewer scales for speed).
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: BNHead,
        *,
        out_index: Sequence[int],
        patch_size: int = 14,
        mode: Literal["slide", "whole"] = "slide",
        crop_size: int | Sequence[int] = 512,
        stride: int | Sequence[int] = 341,
        short_side: int | None = 512,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.out_index = list(out_index)
        self.patch_size = patch_size
        self.align_corners = decode_head.align_corners
        self.mode = mode
        self.crop_size = crop_size
        self.stride = stride
        self.short_side = short_side
        self.scales = tuple(scales)
        self.flip = flip

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes

    def extract_feat(self, img: torch.Tensor) -> Sequence[torch.Tensor]:
        """Final-norm patch maps ``[B, D, h, w]`` of the ``out_index`` blocks of the padded image."""
        padded = center_pad(img, self.patch_size)  # [B, 3, H', W'], multiples of the patch size
        return self.backbone.get_intermediate_layers(padded, n=self.out_index, reshape=True, norm=True)

    def encode_decode(self, img: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, K, H, W]`` at the size of ``img``."""
        logits = self.decode_head(self.extract_feat(img))  # [B, K, h, w]
        return resize(logits, size=img.shape[2:], mode="bilinear", align_corners=self.align_corners)

    def whole_inference(self, img: torch.Tensor) -> torch.Tensor:
        return self.encode_decode(img)  # [B, K, H, W]

    def slide_inference(
        self,
        img: torch.Tensor,
        *,
        crop_size: int | Sequence[int] | None = None,
        stride: int | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, K, H, W]`` averaged over overlapping windows (the released configs: 512, stride 341)."""
        return sliding_window_inference(
            self.encode_decode,
            img,
            out_channels=self.num_classes,
            crop_size=self.crop_size if crop_size is None else crop_size,
            stride=self.stride if stride is None else stride,
        )

    def inference(self, img: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K, H, W]`` of one pass at the current size, by ``self.mode``."""
        if self.mode == "slide":
            return self.slide_inference(img)
        if self.mode == "whole":
            return self.whole_inference(img)
        raise ValueError(f"mode must be 'slide' or 'whole', got {self.mode!r}")

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[B, K, H, W]`` at the input size, averaged over scales and flips.

        ``img``: ``[B, 3, H, W]`` normalised with the ImageNet mean and std.
        """
        if img.dim() != 4:
            raise ValueError(f"Expected an image batch [B, 3, H, W], got shape {tuple(img.shape)}")
        if not self.scales:
            raise ValueError("scales is empty; use at least one ratio, e.g. scales=(1.0,)")
        size = img.shape[2:]
        probs = None
        passes = [(ratio, flipped) for ratio in self.scales for flipped in ((False, True) if self.flip else (False,))]
        start = time.perf_counter()
        for done, (ratio, flipped) in enumerate(passes, start=1):
            scaled = img if self.short_side is None else resize_short_side(img, int(self.short_side * ratio))
            x = scaled.flip(dims=(3,)) if flipped else scaled
            logits = resize(self.inference(x), size=size, mode="bilinear", align_corners=self.align_corners)
            p = torch.softmax(logits, dim=1)  # [B, K, H, W]
            p = p.flip(dims=(3,)) if flipped else p
            probs = p if probs is None else probs + p
            if len(passes) > 1:  # multi-scale inference is slow on a CPU: show that it progresses
                logger.info(
                    "segmentation pass %d/%d (scale %.2f%s, %s px): %.0f s elapsed",
                    done,
                    len(passes),
                    ratio,
                    ", flipped" if flipped else "",
                    "x".join(map(str, x.shape[2:])),
                    time.perf_counter() - start,
                )
        return probs / len(passes)

    def predict(self, img: torch.Tensor) -> torch.Tensor:
        """Class map ``[B, H, W]`` (int64) at the input size."""
        return self.forward(img).argmax(dim=1)
