"""Depth decode heads of the hub depthers (linear ``BNHead`` and ``DPTHead``) in plain PyTorch.

Module names and nesting are kept as in the official DINOv2 heads so that the released mmcv-style head checkpoints
(``decode_head.conv_depth.*``, ``decode_head.reassemble_blocks.*``, ...) load strictly.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .ops import resize

__all__ = [
    "ConvModule",
    "DepthBaseDecodeHead",
    "BNHead",
    "DPTHead",
    "FeatureFusionBlock",
    "HeadDepth",
    "Interpolate",
    "PreActResidualConvUnit",
    "ReassembleBlocks",
]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"ReLU": nn.ReLU, "GELU": nn.GELU}
_NORMS: dict[str, type[nn.Module]] = {"BN": nn.BatchNorm2d, "SyncBN": nn.BatchNorm2d}


def _make_activation(act_cfg: Mapping[str, Any] | None) -> nn.Module | None:
    if act_cfg is None:
        return None
    kind = act_cfg.get("type")
    if kind not in _ACTIVATIONS:
        raise ValueError(f"Unsupported act_cfg type {kind!r}; use one of {sorted(_ACTIVATIONS)} or act_cfg=None")
    return _ACTIVATIONS[kind]()


class ConvModule(nn.Module):
    """Conv2d with optional norm and activation, applied in ``order`` (mmcv's ConvModule, the used subset).

    The convolution is registered as ``conv`` and a norm as ``bn``, the state-dict keys of the released heads.
    Activations are not in-place, so callers need not clone their inputs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool | Literal["auto"] = "auto",
        *,
        norm_cfg: Mapping[str, Any] | None = None,
        act_cfg: Mapping[str, Any] | None = None,
        order: Sequence[str] = ("conv", "norm", "act"),
    ) -> None:
        super().__init__()
        if sorted(order) != ["act", "conv", "norm"]:
            raise ValueError(f"order must be a permutation of ('conv', 'norm', 'act'), got {tuple(order)}")
        if bias == "auto":
            bias = norm_cfg is None
        self.order = tuple(order)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=groups,
            bias=bias,
        )  # fmt: skip
        self.bn: nn.Module | None = None
        if norm_cfg is not None:
            kind = norm_cfg.get("type")
            if kind not in _NORMS:
                raise ValueError(f"Unsupported norm_cfg type {kind!r}; use one of {sorted(_NORMS)} or norm_cfg=None")
            # a norm placed before the conv normalises the input channels
            norm_channels = in_channels if self.order.index("norm") < self.order.index("conv") else out_channels
            self.bn = _NORMS[kind](norm_channels)
        self.activate = _make_activation(act_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.order:
            if step == "conv":
                x = self.conv(x)
            elif step == "norm" and self.bn is not None:
                x = self.bn(x)
            elif step == "act" and self.activate is not None:
                x = self.activate(x)
        return x


class Interpolate(nn.Module):
    """Resampling as a module, so it can sit inside ``nn.Sequential`` (keeps HeadDepth's key indices)."""

    def __init__(self, scale_factor: float, mode: str, align_corners: bool = False) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize(x, scale_factor=self.scale_factor, mode=self.mode, align_corners=self.align_corners)


class HeadDepth(nn.Module):
    """DPT output head: conv 3x3 -> x2 bilinear -> conv 3x3 -> ReLU -> conv 1x1 to one depth channel."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(features, features // 2, kernel_size=3, stride=1, padding=1),
            Interpolate(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(features // 2, 32, kernel_size=3, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, kernel_size=1, stride=1, padding=0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)  # [B, 1, 2h, 2w]


class DepthBaseDecodeHead(nn.Module):
    """Shared part of the depth heads: the output conv ``conv_depth`` and the mapping from it to metres.

    With ``classify=True`` the head predicts a distribution over ``n_bins`` depth bins and returns its
    expectation; otherwise it regresses depth directly. Training losses are not part of the hub copy.
    """

    def __init__(
        self,
        in_channels: int | Sequence[int],
        channels: int = 96,
        conv_cfg: Mapping[str, Any] | None = None,
        act_cfg: Mapping[str, Any] | None = None,
        loss_decode: Sequence[nn.Module] = (),
        sampler: Any = None,
        align_corners: bool = False,
        min_depth: float = 1e-3,
        max_depth: float | None = None,
        norm_cfg: Mapping[str, Any] | None = None,
        classify: bool = False,
        n_bins: int = 256,
        bins_strategy: Literal["UD", "SID"] = "UD",
        norm_strategy: Literal["linear", "softmax", "sigmoid"] = "linear",
        scale_up: bool = False,
    ) -> None:
        super().__init__()
        if conv_cfg is not None:
            raise ValueError(f"conv_cfg={conv_cfg!r} is not supported; only plain Conv2d (conv_cfg=None) exists here")
        if bins_strategy not in ("UD", "SID"):
            raise ValueError(f"bins_strategy must be 'UD' or 'SID', got {bins_strategy!r}")
        if norm_strategy not in ("linear", "softmax", "sigmoid"):
            raise ValueError(f"norm_strategy must be 'linear', 'softmax' or 'sigmoid', got {norm_strategy!r}")
        if classify and max_depth is None:
            raise ValueError("classify=True needs max_depth (the last bin centre), e.g. max_depth=10.0 for NYU")
        self.in_channels = in_channels
        self.channels = channels
        self.act_cfg = dict(act_cfg) if act_cfg is not None else {"type": "ReLU"}
        self.norm_cfg = norm_cfg
        self.loss_decode = nn.ModuleList(loss_decode)
        self.sampler = sampler
        self.align_corners = align_corners
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.classify = classify
        self.n_bins = n_bins
        self.bins_strategy = bins_strategy
        self.norm_strategy = norm_strategy
        self.scale_up = scale_up
        out_channels = n_bins if classify else 1
        self.conv_depth = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1, stride=1)

    def forward(self, inputs: Sequence[Any], img_metas: Any = None, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError("DepthBaseDecodeHead is abstract; use BNHead or DPTHead")

    def forward_test(self, inputs: Sequence[Any], img_metas: Any = None, test_cfg: Any = None) -> torch.Tensor:
        """Inference entry point used by ``DepthEncoderDecoder`` (same as ``forward``)."""
        return self.forward(inputs, img_metas)

    def _bins(self, like: torch.Tensor) -> torch.Tensor:
        if self.bins_strategy == "UD":
            return torch.linspace(self.min_depth, self.max_depth, self.n_bins, device=like.device, dtype=like.dtype)
        # SID: depths spaced evenly in log space between min_depth and max_depth (see README)
        log_min, log_max = math.log10(self.min_depth), math.log10(self.max_depth)
        return torch.logspace(log_min, log_max, self.n_bins, device=like.device, dtype=like.dtype)  # [K]

    def depth_pred(self, feat: torch.Tensor) -> torch.Tensor:
        """Depth in metres ``[B, 1, h, w]`` from the head features ``[B, C, h, w]``."""
        if not self.classify:
            out = self.conv_depth(feat)  # [B, 1, h, w]
            if self.scale_up:
                return torch.sigmoid(out) * self.max_depth
            return F.relu(out) + self.min_depth
        logits = self.conv_depth(feat)  # [B, K, h, w]
        if self.norm_strategy == "linear":
            weights = F.relu(logits) + 0.1
            weights = weights / weights.sum(dim=1, keepdim=True)
        elif self.norm_strategy == "softmax":
            weights = torch.softmax(logits, dim=1)
        else:
            weights = torch.sigmoid(logits)
            weights = weights / weights.sum(dim=1, keepdim=True)
        bins = self._bins(weights)  # [K]
        return torch.einsum("bkhw,k->bhw", weights, bins).unsqueeze(1)  # [B, 1, h, w]


def _merge_class_token(item: Any) -> torch.Tensor:
    """``(patch_map [B, D, h, w], cls [B, D])`` -> ``[B, 2D, h, w]``; a lone tensor passes through as 4-D."""
    if isinstance(item, (list, tuple)):
        if len(item) != 2:
            raise ValueError(f"A head input item must be a tensor or (patch_map, cls_token), got {len(item)} items")
        x, cls_token = item
        if x.dim() == 2:
            x = x[:, :, None, None]
        cls_map = cls_token[:, :, None, None].expand_as(x)  # [B, D, h, w]
        return torch.cat((x, cls_map), dim=1)  # [B, 2D, h, w]
    return item[:, :, None, None] if item.dim() == 2 else item


class BNHead(DepthBaseDecodeHead):
    """Linear depth head: concatenate CLS to every patch, upsample, 1x1 conv to bins (no BN despite the name)."""

    def __init__(
        self,
        input_transform: Literal["resize_concat", "multiple_select"] = "resize_concat",
        in_index: int | Sequence[int] = (0, 1, 2, 3),
        upsample: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if input_transform not in ("resize_concat", "multiple_select"):
            raise ValueError(f"input_transform must be 'resize_concat' or 'multiple_select', got {input_transform!r}")
        self.input_transform = input_transform
        self.in_index = [in_index] if isinstance(in_index, int) else list(in_index)
        self.upsample = upsample
        out_channels = self.n_bins if self.classify else 1
        self.conv_depth = nn.Conv2d(self.channels, out_channels, kernel_size=1, padding=0, stride=1)

    def _transform_inputs(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        selected = [inputs[i] for i in self.in_index]
        if self.input_transform == "multiple_select":
            raise ValueError("BNHead.forward needs input_transform='resize_concat' (one tensor for the 1x1 conv)")
        size = [s * self.upsample for s in selected[0].shape[2:]]
        resized = [resize(x, size=size, mode="bilinear", align_corners=self.align_corners) for x in selected]
        return torch.cat(resized, dim=1)  # [B, C, up*h, up*w]

    def _forward_feature(self, inputs: Sequence[Any]) -> torch.Tensor:
        return self._transform_inputs([_merge_class_token(item) for item in inputs])

    def forward(self, inputs: Sequence[Any], img_metas: Any = None, **kwargs: Any) -> torch.Tensor:
        return self.depth_pred(self._forward_feature(inputs))  # [B, 1, up*h, up*w]


class ReassembleBlocks(nn.Module):
    """Turns the four ViT token maps into a feature pyramid (x4, x2, x1, x1/2 of the patch grid)."""

    def __init__(
        self,
        in_channels: int = 768,
        out_channels: Sequence[int] = (96, 192, 384, 768),
        readout_type: Literal["ignore", "add", "project"] = "ignore",
        patch_size: int = 16,
    ) -> None:
        super().__init__()
        if readout_type not in ("ignore", "add", "project"):
            raise ValueError(f"readout_type must be 'ignore', 'add' or 'project', got {readout_type!r}")
        if len(out_channels) != 4:
            raise ValueError(f"ReassembleBlocks builds a 4-level pyramid; got out_channels={list(out_channels)}")
        self.readout_type = readout_type
        self.patch_size = patch_size
        self.projects = nn.ModuleList(ConvModule(in_channels, c, kernel_size=1, act_cfg=None) for c in out_channels)
        c = out_channels
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4, padding=0),
                nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2, padding=0),
                nn.Identity(),
                nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        if readout_type == "project":
            self.readout_projects = nn.ModuleList(
                nn.Sequential(nn.Linear(2 * in_channels, in_channels), nn.GELU()) for _ in out_channels
            )

    def forward(self, inputs: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        out = []
        for i, (x, cls_token) in enumerate(inputs):
            B, D, h, w = x.shape
            if self.readout_type == "project":
                tokens = x.flatten(2).transpose(1, 2)  # [B, hw, D]
                readout = cls_token.unsqueeze(1).expand_as(tokens)  # [B, hw, D]
                tokens = self.readout_projects[i](torch.cat((tokens, readout), dim=-1))  # [B, hw, D]
                x = tokens.transpose(1, 2).reshape(B, D, h, w)  # [B, D, h, w]
            elif self.readout_type == "add":
                x = x + cls_token[:, :, None, None]  # [B, D, h, w]
            x = self.projects[i](x)  # [B, c_i, h, w]
            out.append(self.resize_layers[i](x))
        return out


class PreActResidualConvUnit(nn.Module):
    """ReLU -> conv 3x3 -> ReLU -> conv 3x3, plus the identity (convs without bias)."""

    def __init__(
        self,
        in_channels: int,
        act_cfg: Mapping[str, Any] | None,
        norm_cfg: Mapping[str, Any] | None,
        stride: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        common = {"norm_cfg": norm_cfg, "act_cfg": act_cfg, "bias": False, "order": ("act", "conv", "norm")}
        self.conv1 = ConvModule(
            in_channels, in_channels, 3, stride=stride, padding=dilation, dilation=dilation, **common
        )
        self.conv2 = ConvModule(in_channels, in_channels, 3, padding=1, **common)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class FeatureFusionBlock(nn.Module):
    """Adds a (resized, refined) skip to the running map, refines it, upsamples x2 and projects it (1x1)."""

    def __init__(
        self,
        in_channels: int,
        act_cfg: Mapping[str, Any] | None,
        norm_cfg: Mapping[str, Any] | None,
        expand: bool = False,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.expand = expand
        self.align_corners = align_corners
        self.out_channels = in_channels // 2 if expand else in_channels
        self.project = ConvModule(self.in_channels, self.out_channels, kernel_size=1, act_cfg=None, bias=True)
        self.res_conv_unit1: PreActResidualConvUnit | None = PreActResidualConvUnit(in_channels, act_cfg, norm_cfg)
        self.res_conv_unit2 = PreActResidualConvUnit(in_channels, act_cfg, norm_cfg)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        if len(inputs) == 2:
            if self.res_conv_unit1 is None:
                raise RuntimeError("This fusion block was built without res_conv_unit1 and takes no skip input")
            skip = inputs[1]
            if skip.shape != x.shape:
                skip = resize(skip, size=x.shape[2:], mode="bilinear", align_corners=False)
            x = x + self.res_conv_unit1(skip)
        x = self.res_conv_unit2(x)
        x = resize(x, scale_factor=2, mode="bilinear", align_corners=self.align_corners)  # [B, C, 2h, 2w]
        return self.project(x)


class DPTHead(DepthBaseDecodeHead):
    """DPT depth head (Ranftl et al. 2021): reassemble, per-level 3x3 conv, fuse top-down, project, HeadDepth.

    The output is 16x the patch grid; ``DepthEncoderDecoder`` clamps it and resizes it to the input size.
    """

    def __init__(
        self,
        embed_dims: int = 768,
        post_process_channels: Sequence[int] = (96, 192, 384, 768),
        readout_type: Literal["ignore", "add", "project"] = "ignore",
        patch_size: int = 16,
        expand_channels: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.expand_channels = expand_channels
        self.reassemble_blocks = ReassembleBlocks(embed_dims, post_process_channels, readout_type, patch_size)
        self.post_process_channels = [
            c * 2**i if expand_channels else c for i, c in enumerate(post_process_channels)
        ]  # fmt: skip
        self.convs = nn.ModuleList(
            ConvModule(c, self.channels, kernel_size=3, padding=1, act_cfg=None, bias=False)
            for c in self.post_process_channels
        )
        self.fusion_blocks = nn.ModuleList(
            FeatureFusionBlock(self.channels, self.act_cfg, self.norm_cfg) for _ in self.convs
        )
        self.fusion_blocks[0].res_conv_unit1 = None  # the deepest level has no skip input
        self.project = ConvModule(
            self.channels, self.channels, kernel_size=3, padding=1, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg
        )
        self.num_fusion_blocks = len(self.fusion_blocks)
        self.num_reassemble_blocks = len(self.reassemble_blocks.resize_layers)
        self.num_post_process_channels = len(self.post_process_channels)
        if not (self.num_fusion_blocks == self.num_reassemble_blocks == self.num_post_process_channels):
            raise ValueError("DPTHead needs as many post_process_channels as reassemble levels (4)")
        self.conv_depth = HeadDepth(self.channels)

    def forward(self, inputs: Sequence[Any], img_metas: Any = None, **kwargs: Any) -> torch.Tensor:
        if len(inputs) != self.num_reassemble_blocks:
            raise ValueError(f"DPTHead expects {self.num_reassemble_blocks} (patch_map, cls) inputs, got {len(inputs)}")
        feats = self.reassemble_blocks(inputs)
        feats = [conv(f) for conv, f in zip(self.convs, feats)]  # each [B, channels, *, *]
        out = self.fusion_blocks[0](feats[-1])
        for i in range(1, len(self.fusion_blocks)):
            out = self.fusion_blocks[i](out, feats[-(i + 1)])
        out = self.project(out)  # [B, channels, 8h, 8w]
        return self.depth_pred(out)  # [B, 1, 16h, 16w]
