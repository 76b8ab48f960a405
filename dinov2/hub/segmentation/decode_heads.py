"""Linear segmentation head of the released ADE20K / VOC2012 heads (mmseg's ``BNHead``), in plain PyTorch."""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dinov2.hub.depth.ops import resize

__all__ = ["BNHead"]


class BNHead(nn.Module):
    """BatchNorm then a 1x1 conv over the concatenated (resized) backbone maps.

    ``in_channels`` lists the channels of the selected inputs; their sum must equal ``channels``. BatchNorm2d
    stands in for the SyncBatchNorm of the released heads: the two agree at inference and share the state-dict keys
    (``bn.*``), so the released weights load; the classifier is ``conv_seg`` as in mmseg.
    """

    def __init__(
        self,
        in_channels: int | Sequence[int],
        channels: int,
        num_classes: int,
        *,
        in_index: int | Sequence[int] = -1,
        resize_factors: Sequence[float] | None = None,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        in_channels = [in_channels] if isinstance(in_channels, int) else list(in_channels)
        self.in_index = [in_index] if isinstance(in_index, int) else list(in_index)
        if len(in_channels) != len(self.in_index):
            raise ValueError(f"in_channels {in_channels} and in_index {self.in_index} must have the same length")
        if sum(in_channels) != channels:
            raise ValueError(f"BNHead needs channels == sum(in_channels) = {sum(in_channels)}, got {channels}")
        if resize_factors is not None and len(resize_factors) != len(self.in_index):
            raise ValueError(f"resize_factors {list(resize_factors)} needs one factor per in_index {self.in_index}")
        self.in_channels = in_channels
        self.channels = channels
        self.num_classes = num_classes
        self.resize_factors = list(resize_factors) if resize_factors is not None else None
        self.align_corners = align_corners
        self.bn = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)

    def _transform_inputs(self, inputs: Sequence[Any]) -> torch.Tensor:
        flat: list[torch.Tensor] = []
        for item in inputs:  # a (patch_map, cls) pair contributes both tensors
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        flat = [x[:, :, None, None] if x.dim() == 2 else x for x in flat]  # a global descriptor is a 1x1 map
        selected = [flat[i] for i in self.in_index]
        if self.resize_factors is not None:
            selected = [
                resize(x, scale_factor=f, mode="bilinear" if f >= 1 else "area", align_corners=self.align_corners)
                for x, f in zip(selected, self.resize_factors)
            ]
        size = selected[0].shape[2:]
        selected = [resize(x, size=size, mode="bilinear", align_corners=self.align_corners) for x in selected]
        return torch.cat(selected, dim=1)  # [B, channels, h, w]

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)  # [B, K, h, w]

    def forward(self, inputs: Sequence[Any]) -> torch.Tensor:
        """Class logits ``[B, num_classes, h, w]`` on the grid of the first selected input."""
        return self.cls_seg(self.bn(self._transform_inputs(inputs)))
