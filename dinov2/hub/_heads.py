"""Helpers shared by the hub heads: weights-name parsing and strict loading of released head checkpoints."""

import logging
from collections.abc import Mapping
from enum import Enum
from typing import Any, TypeVar

import torch
from torch import nn

from dinov2.errors import WeightsError

logger = logging.getLogger("dinov2")

_E = TypeVar("_E", bound=Enum)


def parse_weights(weights: Enum | str, enum_cls: type[_E]) -> _E:
    """``weights`` as a member of ``enum_cls``; strings match member names case-insensitively."""
    if isinstance(weights, enum_cls):
        return weights
    if isinstance(weights, str):
        for member in enum_cls:
            if member.name.lower() == weights.lower():
                return member
    names = [member.name for member in enum_cls]
    raise ValueError(f"Unsupported weights {weights!r}; use one of {names} (or the {enum_cls.__qualname__} enum)")


def extract_head_state_dict(
    checkpoint: Mapping[str, Any], *, prefix: str = "decode_head.", source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """The ``prefix`` part of a released head checkpoint, with ``prefix`` removed.

    mmcv/mmseg files wrap the weights as ``{"state_dict": ..., "meta": ...}``; a bare state dict is accepted
    too. ``backbone.*`` entries are skipped because the backbone comes from its own checkpoint; any other key is
    an error, so nothing is silently dropped.
    """
    state_dict = checkpoint.get("state_dict", checkpoint)
    head: dict[str, torch.Tensor] = {}
    foreign = []
    for key, value in state_dict.items():
        if key.startswith(prefix):
            head[key[len(prefix) :]] = value
        elif not key.startswith("backbone."):
            foreign.append(key)
    if foreign:
        raise WeightsError(f"{source} has keys outside '{prefix}*' and 'backbone.*': {sorted(foreign)[:10]}")
    if not head:
        raise WeightsError(f"{source} holds no '{prefix}*' weights; is it a head checkpoint of the released layout?")
    return head


def load_head_weights(head: nn.Module, url_or_path: str, *, prefix: str | None = "decode_head.") -> None:
    """Download (or read) a released head checkpoint and load it strictly into ``head``.

    ``prefix=None`` loads a plain state dict as is (the ImageNet linear heads hold ``weight`` and ``bias``).
    """
    from dinov2.models.weights import load_state_dict_from_url_or_path

    checkpoint = load_state_dict_from_url_or_path(url_or_path)
    if prefix is None:
        state_dict = checkpoint
    else:
        state_dict = extract_head_state_dict(checkpoint, prefix=prefix, source=url_or_path)
    try:
        head.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise WeightsError(
            f"Head weights from {url_or_path} do not fit the {type(head).__name__} built: {error}"
        ) from error
    logger.info("Loaded head weights from %s", url_or_path)
