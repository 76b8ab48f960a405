"""torch.hub builders of the released DINOv2 backbones (ViT-S/B/L/g, patch 14, with and without registers)."""

from collections.abc import Callable
from enum import Enum
from pathlib import Path

from torch import nn

from .utils import _DINOV2_BASE_URL, _make_dinov2_model_name
from .variants import VARIANTS, entrypoint

__all__ = [
    "Weights",
    "dinov2_vits14",
    "dinov2_vitb14",
    "dinov2_vitl14",
    "dinov2_vitg14",
    "dinov2_vits14_reg",
    "dinov2_vitb14_reg",
    "dinov2_vitl14_reg",
    "dinov2_vitg14_reg",
]


class Weights(Enum):
    LVD142M = "LVD142M"


def _resolve_weights(weights: "Weights | str") -> Weights | str:
    """A ``Weights`` member (by value or name) or a path/URL string to load instead of the released file."""
    if isinstance(weights, Weights):
        return weights
    if not isinstance(weights, str):
        raise TypeError(f"weights must be a Weights member, its name, a path or a URL; got {type(weights).__name__}")
    if weights in Weights.__members__:
        return Weights[weights]
    from dinov2.models.weights import is_url

    if is_url(weights):
        return weights
    if Path(weights).expanduser().is_file():
        return weights
    raise ValueError(
        f"unsupported weights {weights!r}: use one of {list(Weights.__members__)}, an existing file path or a URL"
    )


# backbone_args keys of a training export (dinov2.models.backbone_args_from_cfg) -> vision-transformer kwargs
_EXPORT_ARG_NAMES = {"layerscale": "init_values"}


def _export_backbone_args(checkpoint: dict) -> dict[str, object]:
    """The ``backbone_args`` a training export carries (renamed for the ViT factories), or {} for other files."""
    args = checkpoint.get("backbone_args")
    if not isinstance(args, dict):
        return {}
    renamed = {_EXPORT_ARG_NAMES.get(key, key): value for key, value in args.items()}
    if not renamed.get("depth"):  # 0 (or absent): the depth of the arch
        renamed.pop("depth", None)
    return renamed


def _make_dinov2_model(
    *,
    arch_name: str = "vit_large",
    img_size: int = 518,
    patch_size: int = 14,
    init_values: float = 1.0,
    ffn_layer: str = "mlp",
    block_chunks: int = 0,
    num_register_tokens: int = 0,
    interpolate_antialias: bool = False,
    interpolate_offset: float = 0.1,
    pretrained: bool = True,
    weights: Weights | str = Weights.LVD142M,
    **kwargs: object,
) -> nn.Module:
    """Builds the backbone with the released hyper-parameters (``kwargs`` override them) and, if ``pretrained``,
    loads the weights strictly: the official file for a ``Weights`` member (from torch.hub's cache when present),
    else the given path or URL (which may also be a training checkpoint; see ``load_pretrained_weights``). A
    teacher exported by training carries ``backbone_args`` (arch, patch and image size, LayerScale, ...), which
    replace the defaults, so the matching model is built."""
    from dinov2.models import vision_transformer as vits
    from dinov2.models.weights import load_pretrained_weights, load_state_dict_from_url_or_path

    weights = _resolve_weights(weights)
    vit_kwargs = dict(
        img_size=img_size,
        patch_size=patch_size,
        init_values=init_values,
        ffn_layer=ffn_layer,
        block_chunks=block_chunks,
        num_register_tokens=num_register_tokens,
        interpolate_antialias=interpolate_antialias,
        interpolate_offset=interpolate_offset,
    )
    checkpoint = None
    if pretrained and isinstance(weights, str):
        checkpoint = load_state_dict_from_url_or_path(weights)
        # A teacher exported by training says which backbone it fits; that replaces the entrypoint's defaults.
        export_args = _export_backbone_args(checkpoint)
        if export_args:
            arch_name = str(export_args.pop("arch"))
            vit_kwargs.update(export_args)
    vit_kwargs.update(**kwargs)
    try:
        factory = getattr(vits, arch_name)
    except AttributeError:
        raise ValueError(f"unknown arch_name={arch_name!r}; use vit_small, vit_base, vit_large or vit_giant2") from None
    model = factory(**vit_kwargs)

    if pretrained:
        if isinstance(weights, Weights):
            model_base_name = _make_dinov2_model_name(arch_name, patch_size)
            model_full_name = _make_dinov2_model_name(arch_name, patch_size, num_register_tokens)
            load_pretrained_weights(
                model, f"{_DINOV2_BASE_URL}/{model_base_name}/{model_full_name}_pretrain.pth", checkpoint_key="teacher"
            )
        else:
            load_pretrained_weights(model, checkpoint, checkpoint_key="teacher", name=weights)
    return model


def _backbone(name: str) -> Callable[..., nn.Module]:
    return entrypoint(
        VARIANTS[name], _make_dinov2_model, "", "DINOv2 {}, pretrained on LVD-142M.", pretrained=True,
        weights=Weights.LVD142M,
    )  # fmt: skip


dinov2_vits14 = _backbone("vits14")
dinov2_vitb14 = _backbone("vitb14")
dinov2_vitl14 = _backbone("vitl14")
dinov2_vitg14 = _backbone("vitg14")
dinov2_vits14_reg = _backbone("vits14_reg")
dinov2_vitb14_reg = _backbone("vitb14_reg")
dinov2_vitl14_reg = _backbone("vitl14_reg")
dinov2_vitg14_reg = _backbone("vitg14_reg")
