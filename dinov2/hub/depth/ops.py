"""Tensor helpers shared by the depth and segmentation heads (mmcv-free)."""

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def resize(
    input: torch.Tensor,
    size: Sequence[int] | torch.Size | None = None,
    scale_factor: float | Sequence[float] | None = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
) -> torch.Tensor:
    """``F.interpolate`` that accepts sizes given as tensors or tuples, as mmseg's ``resize`` does.

    Kept as a named function because the heads call it with mmseg's argument names; the mmseg
    warning about odd sizes with ``align_corners=True`` is left out (it never changes the result).
    """
    if size is not None:
        size = tuple(int(s) for s in size)
    if mode in ("nearest", "area"):
        align_corners = None
    return F.interpolate(input, size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners)


def sliding_window_inference(
    predict: Callable[[torch.Tensor], torch.Tensor],
    img: torch.Tensor,
    *,
    out_channels: int,
    crop_size: int | Sequence[int],
    stride: int | Sequence[int],
) -> torch.Tensor:
    """Average ``predict`` over overlapping windows covering ``img`` (mmseg's slide inference).

    ``predict`` maps a crop ``[B, C, h, w]`` to ``[B, out_channels, h, w]``. Windows start every ``stride``
    pixels; the last row/column of windows is shifted back to end at the border, and every pixel is divided
    by the number of windows covering it. Images smaller than a window give a single (smaller) window.
    """
    h_crop, w_crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    h_stride, w_stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if min(h_crop, w_crop, h_stride, w_stride) <= 0:
        raise ValueError(f"crop_size and stride must be positive, got crop_size={crop_size}, stride={stride}")
    B, _, H, W = img.shape
    h_grids = max(H - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(W - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = img.new_zeros((B, out_channels, H, W))  # [B, K, H, W]
    count = img.new_zeros((1, 1, H, W))  # [1, 1, H, W]
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, H)
            x2 = min(w_idx * w_stride + w_crop, W)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            preds[:, :, y1:y2, x1:x2] += predict(img[:, :, y1:y2, x1:x2])
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


def center_pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last two dims of ``x`` up to multiples of ``multiple``, half before and the rest after.

    Same padding as ``dinov2.hub.utils.CenterPadding``, but without its ``inference_mode``, so gradients can
    flow when a head is trained on top of the padded features.
    """
    pads: list[int] = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad lists the last dim first
        total = math.ceil(size / multiple) * multiple - size
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x  # [..., H', W']
