"""ImageNet-1k linear classifiers on the released backbones (``dinov2_vit*14[_reg]_lc`` hub entrypoints)."""

from collections.abc import Callable
from enum import Enum

import torch
from torch import nn

from ._heads import load_head_weights, parse_weights
from .variants import VARIANTS, entrypoint

__all__ = [
    "Weights",
    "dinov2_vitb14_lc",
    "dinov2_vitb14_reg_lc",
    "dinov2_vitg14_lc",
    "dinov2_vitg14_reg_lc",
    "dinov2_vitl14_lc",
    "dinov2_vitl14_reg_lc",
    "dinov2_vits14_lc",
    "dinov2_vits14_reg_lc",
]

_NUM_CLASSES = 1_000


class Weights(Enum):
    IMAGENET1K = "IMAGENET1K"


def _check_layers(layers: int) -> None:
    if layers not in (1, 4):
        raise ValueError(f"layers must be 1 or 4 (the released heads), got {layers!r}")


def _make_dinov2_linear_classification_head(
    *,
    arch_name: str = "vit_large",
    patch_size: int = 14,
    embed_dim: int = 1024,
    layers: int = 4,
    pretrained: bool = True,
    weights: Weights | str = Weights.IMAGENET1K,
    num_register_tokens: int = 0,
    head_weights: str | None = None,
) -> nn.Linear:
    """``nn.Linear((1 + layers) * embed_dim, 1000)``, loaded strictly if pretrained: from ``head_weights`` (a path
    or URL) when given, else from the released file."""
    _check_layers(layers)
    parse_weights(weights, Weights)
    linear_head = nn.Linear((1 + layers) * embed_dim, _NUM_CLASSES)
    if head_weights:  # a head file of the user's, whether or not the backbone is pretrained
        load_head_weights(linear_head, head_weights, prefix=None)
    elif pretrained:
        from .utils import _DINOV2_BASE_URL, _make_dinov2_model_name

        model_base_name = _make_dinov2_model_name(arch_name, patch_size)
        model_full_name = _make_dinov2_model_name(arch_name, patch_size, num_register_tokens)
        layers_str = str(layers) if layers == 4 else ""
        url = f"{_DINOV2_BASE_URL}/{model_base_name}/{model_full_name}_linear{layers_str}_head.pth"
        load_head_weights(linear_head, url, prefix=None)
    return linear_head


class _LinearClassifierWrapper(nn.Module):
    """Backbone + linear head; the head sees the CLS tokens of the last ``layers`` blocks and the mean patch token.

    This is ``linear.py``'s ``create_linear_input(use_avgpool=True)``: with 4 layers the input is
    ``[cls_1, cls_2, cls_3, cls_4, mean(patch tokens of the last block)]`` (final norm applied, registers never
    included), with 1 layer ``[cls, mean(patch tokens)]``.
    """

    def __init__(self, *, backbone: nn.Module, linear_head: nn.Linear, layers: int = 4) -> None:
        super().__init__()
        _check_layers(layers)
        self.backbone = backbone
        self.linear_head = linear_head
        self.layers = layers

    def linear_input(self, x: torch.Tensor) -> torch.Tensor:
        """The head input ``[B, (1 + layers) * D]`` for images ``[B, 3, H, W]`` (sides multiples of 14)."""
        if self.layers == 1:
            features = self.backbone.forward_features(x)
            cls_token = features["x_norm_clstoken"]  # [B, D]
            patch_tokens = features["x_norm_patchtokens"]  # [B, N, D]
            return torch.cat([cls_token, patch_tokens.mean(dim=1)], dim=1)  # [B, 2D]
        outputs = self.backbone.get_intermediate_layers(x, n=4, return_class_token=True)
        cls_tokens = [cls_token for _, cls_token in outputs]  # 4 x [B, D]
        return torch.cat([*cls_tokens, outputs[-1][0].mean(dim=1)], dim=1)  # [B, 5D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits ``[B, 1000]`` (class names: ``dinov2.hub.imagenet_classes``)."""
        return self.linear_head(self.linear_input(x))


def _make_dinov2_linear_classifier(
    *,
    arch_name: str = "vit_large",
    layers: int = 4,
    pretrained: bool = True,
    weights: Weights | str = Weights.IMAGENET1K,
    num_register_tokens: int = 0,
    interpolate_antialias: bool = False,
    interpolate_offset: float = 0.1,
    head_weights: str | None = None,
    **kwargs,
) -> _LinearClassifierWrapper:
    """Backbone (``_make_dinov2_model``, random too when not pretrained) + linear head (from ``head_weights``, a
    path or URL, when given); ``kwargs`` go to the ViT."""
    from .backbones import _make_dinov2_model

    _check_layers(layers)
    weights = parse_weights(weights, Weights)
    backbone = _make_dinov2_model(
        arch_name=arch_name,
        pretrained=pretrained,
        num_register_tokens=num_register_tokens,
        interpolate_antialias=interpolate_antialias,
        interpolate_offset=interpolate_offset,
        **kwargs,
    )
    linear_head = _make_dinov2_linear_classification_head(
        arch_name=arch_name,
        patch_size=backbone.patch_size,
        embed_dim=backbone.embed_dim,
        layers=layers,
        pretrained=pretrained,
        weights=weights,
        num_register_tokens=num_register_tokens,
        head_weights=head_weights,
    )
    return _LinearClassifierWrapper(backbone=backbone, linear_head=linear_head, layers=layers)


def _classifier(name: str) -> Callable[..., _LinearClassifierWrapper]:
    return entrypoint(
        VARIANTS[name], _make_dinov2_linear_classifier, "_lc", "Linear classifier (ImageNet-1k) on DINOv2 {}.",
        layers=4, pretrained=True, weights=Weights.IMAGENET1K,
    )  # fmt: skip


dinov2_vits14_lc = _classifier("vits14")
dinov2_vitb14_lc = _classifier("vitb14")
dinov2_vitl14_lc = _classifier("vitl14")
dinov2_vitg14_lc = _classifier("vitg14")
dinov2_vits14_reg_lc = _classifier("vits14_reg")
dinov2_vitb14_reg_lc = _classifier("vitb14_reg")
dinov2_vitl14_reg_lc = _classifier("vitl14_reg")
dinov2_vitg14_reg_lc = _classifier("vitg14_reg")
