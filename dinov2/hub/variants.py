"""The released DINOv2 backbones, one row each, and the one way every hub entrypoint is made from a row.

A variant fixes what differs from the ViT builders' defaults: the architecture, the giant's SwiGLU FFN, and for the
register backbones 4 register tokens with their interpolation settings. The backbone, classifier, depther and
segmenter entrypoints are all ``entrypoint(variant, builder, ...)``, so each of them passes every keyword on to the
backbone and only this table changes when a variant is added.
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["VARIANTS", "Variant", "entrypoint"]

_REGISTER_SETTINGS = {"num_register_tokens": 4, "interpolate_antialias": True, "interpolate_offset": 0.0}


@dataclass(frozen=True)
class Variant:
    name: str  # entrypoints are dinov2_<name>, dinov2_<name>_lc, ...
    arch_name: str
    label: str
    registers: bool = False

    @property
    def description(self) -> str:
        return f"{self.label} with 4 registers" if self.registers else self.label

    def builder_kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The builder's keyword arguments: this variant's settings, then ``overrides`` (which win)."""
        settings: dict[str, Any] = {"arch_name": self.arch_name}
        if self.arch_name == "vit_giant2":
            settings["ffn_layer"] = "swiglufused"
        if self.registers:
            settings.update(_REGISTER_SETTINGS)
        return {**settings, **overrides}


_ARCHS = (
    ("vits14", "vit_small", "ViT-S/14 (21M parameters)"),
    ("vitb14", "vit_base", "ViT-B/14 (86M parameters)"),
    ("vitl14", "vit_large", "ViT-L/14 (300M parameters)"),
    ("vitg14", "vit_giant2", "ViT-g/14 (1,100M parameters)"),
)
VARIANTS: dict[str, Variant] = {
    f"{name}{'_reg' if registers else ''}": Variant(f"{name}{'_reg' if registers else ''}", arch, label, registers)
    for registers in (False, True)
    for name, arch, label in _ARCHS
}


def entrypoint(variant: Variant, build: Callable[..., nn.Module], suffix: str, doc: str, **defaults: Any):
    """The hub entrypoint ``dinov2_<variant.name><suffix>``: ``build`` called with the variant's settings, the
    keyword ``defaults`` and whatever the caller passes (any of them, and any backbone keyword, may be overridden).
    ``doc`` is its docstring, with ``{}`` replaced by the variant's description."""

    def entry(**kwargs: Any) -> nn.Module:
        return build(**variant.builder_kwargs({**defaults, **kwargs}))

    entry.__name__ = entry.__qualname__ = f"dinov2_{variant.name}{suffix}"
    entry.__doc__ = doc.format(variant.description)
    parameters = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in defaults.items()]
    entry.__signature__ = inspect.Signature([*parameters, inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])
    return entry
