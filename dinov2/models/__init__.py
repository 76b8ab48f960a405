"""Backbone construction from the training config (``student`` section)."""

import logging
from collections.abc import Callable, Mapping
from types import SimpleNamespace

from torch import nn

from . import vision_transformer as vits

__all__ = ["backbone_args_from_cfg", "build_model", "build_model_from_backbone_args", "build_model_from_cfg"]

logger = logging.getLogger("dinov2")

_ARCHS: dict[str, Callable[..., vits.DinoVisionTransformer]] = {
    "vit_tiny": vits.vit_tiny,
    "vit_small": vits.vit_small,
    "vit_base": vits.vit_base,
    "vit_large": vits.vit_large,
    "vit_giant2": vits.vit_giant2,
}


def build_model(
    args: object, only_teacher: bool = False, img_size: int = 224
) -> tuple[nn.Module, int] | tuple[nn.Module, nn.Module, int]:
    """Builds ``(student, teacher, embed_dim)``, or ``(teacher, embed_dim)`` with ``only_teacher``.

    ``args`` is the config's ``student`` section (attribute access, or a mapping). A ``_memeff`` suffix of
    ``args.arch`` is accepted and ignored (attention always goes through SDPA, or xFormers when available);
    ``args`` is not modified. The teacher has no stochastic depth; the two models are initialised independently
    (the meta-architecture copies the student into the teacher).
    """
    if isinstance(args, Mapping):
        args = SimpleNamespace(**args)
    arch = str(args.arch).removesuffix("_memeff")
    if arch not in _ARCHS:
        raise ValueError(f"unknown student.arch={args.arch!r}; choose one of {sorted(_ARCHS)} (optionally + '_memeff')")
    vit_kwargs = dict(
        img_size=img_size,
        patch_size=args.patch_size,
        init_values=args.layerscale,
        ffn_layer=args.ffn_layer,
        block_chunks=args.block_chunks,
        qkv_bias=args.qkv_bias,
        proj_bias=args.proj_bias,
        ffn_bias=args.ffn_bias,
        num_register_tokens=args.num_register_tokens,
        interpolate_offset=args.interpolate_offset,
        interpolate_antialias=args.interpolate_antialias,
    )
    depth = int(getattr(args, "depth", 0) or 0)
    if depth < 0:
        raise ValueError(f"student.depth={depth} must be >= 0 (0: the depth of student.arch)")
    if depth:
        vit_kwargs["depth"] = depth
    teacher = _ARCHS[arch](**vit_kwargs)
    if only_teacher:
        return teacher, teacher.embed_dim
    student = _ARCHS[arch](
        **vit_kwargs,
        drop_path_rate=args.drop_path_rate,
        drop_path_uniform=args.drop_path_uniform,
    )
    return student, teacher, student.embed_dim


def build_model_from_cfg(cfg: object, only_teacher: bool = False) -> tuple[nn.Module, ...]:
    """:func:`build_model` from a full training config: ``cfg.student`` at ``cfg.crops.global_crops_size``."""
    return build_model(cfg.student, only_teacher=only_teacher, img_size=cfg.crops.global_crops_size)


# The ``student`` keys that fix a backbone's architecture (everything a teacher export needs to be rebuilt).
_BACKBONE_ARG_KEYS = (
    "arch",
    "depth",
    "patch_size",
    "layerscale",
    "ffn_layer",
    "qkv_bias",
    "proj_bias",
    "ffn_bias",
    "num_register_tokens",
    "interpolate_antialias",
    "interpolate_offset",
)


# Keys older exports may lack.
_OPTIONAL_ARG_KEYS = ("depth",)


def backbone_args_from_cfg(cfg: object) -> dict[str, object]:
    """Plain ``{key: value}`` describing the backbone of a training config: the architecture keys of
    ``cfg.student`` and ``img_size`` (the global crop size). Stored in teacher exports."""
    args = {key: _plain(getattr(cfg.student, key)) for key in _BACKBONE_ARG_KEYS}
    return {**args, "img_size": int(cfg.crops.global_crops_size)}


def _plain(value: object) -> object:
    return value if isinstance(value, bool | int | float | str) else str(value)


def build_model_from_backbone_args(backbone_args: Mapping[str, object]) -> nn.Module:
    """The (teacher, no stochastic depth) backbone that ``backbone_args`` (see :func:`backbone_args_from_cfg`)
    describe, randomly initialised."""
    unknown = sorted(set(backbone_args) - {*_BACKBONE_ARG_KEYS, "img_size"})
    missing = sorted(set(_BACKBONE_ARG_KEYS) - set(backbone_args) - set(_OPTIONAL_ARG_KEYS))
    if unknown or missing:
        raise ValueError(f"backbone_args: unknown keys {unknown}, missing keys {missing}")
    args = {key: backbone_args[key] for key in _BACKBONE_ARG_KEYS if key in backbone_args}
    model, _ = build_model({**args, "block_chunks": 0}, only_teacher=True, img_size=int(backbone_args["img_size"]))
    return model
