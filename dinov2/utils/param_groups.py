"""Optimizer parameter groups of DINOv2 training: layer-wise lr decay, no weight decay on biases/norms/LayerScale,
a reduced lr for the patch embedding, and a flag for the heads' last layer (frozen during the first epoch)."""

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

logger = logging.getLogger("dinov2")

__all__ = ["get_vit_lr_decay_rate", "get_params_groups_with_decay", "fuse_params_groups"]

_EMBEDDING_NAMES = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")


def get_vit_lr_decay_rate(
    name: str,
    lr_decay_rate: float = 1.0,
    num_layers: int = 12,
    force_is_backbone: bool = False,
    chunked_blocks: bool = False,
) -> float:
    """lr multiplier ``lr_decay_rate ** (num_layers + 1 - layer_id)`` of the parameter called ``name``.

    Layer ids: embeddings 0, block i (global index, also inside ``blocks.<chunk>.<i>.``) i + 1, anything else (final
    norm, heads) num_layers + 1. Names count as backbone names when they start with ``backbone`` or when
    ``force_is_backbone`` is set (the meta-arch passes ``num_layers > 0``).
    """
    layer_id = num_layers + 1
    if name.startswith("backbone") or force_is_backbone:
        if any(embedding in name for embedding in _EMBEDDING_NAMES):
            layer_id = 0
        elif "blocks." in name and "residual." not in name:
            # ["blocks", <chunk>, <i>, ...] (chunked) or ["blocks", <i>, ...] (flat)
            after_blocks = name[name.find("blocks.") :].split(".")
            layer_id = int(after_blocks[2 if chunked_blocks and force_is_backbone else 1]) + 1
    return lr_decay_rate ** (num_layers + 1 - layer_id)


def _n_blocks(model: nn.Module) -> tuple[int, bool]:
    """Number of transformer blocks (0 for heads) and whether they are grouped in chunks."""
    if hasattr(model, "n_blocks"):
        return int(model.n_blocks), bool(getattr(model, "chunked_blocks", False))
    if hasattr(model, "blocks"):
        return len(model.blocks), False
    if hasattr(model, "backbone") and hasattr(model.backbone, "blocks"):
        return len(model.backbone.blocks), False
    return 0, False


def get_params_groups_with_decay(
    model: nn.Module, lr_decay_rate: float = 1.0, patch_embed_lr_mult: float = 1.0
) -> list[dict[str, Any]]:
    """One group per trainable parameter with its ``lr_multiplier``, ``wd_multiplier`` and ``is_last_layer``.

    Weight decay is off (``wd_multiplier`` 0) only for biases, norms and LayerScale ``gamma``; the class/register
    tokens, position embedding, mask token and the heads' weight-normalised last layer do get weight decay, as in
    the official DINOv2 code, so training matches the released runs.
    """
    n_blocks, chunked_blocks = _n_blocks(model)
    groups = []
    for raw_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = raw_name.replace("_fsdp_wrapped_module.", "").replace("_orig_mod.", "")
        lr_multiplier = get_vit_lr_decay_rate(
            name, lr_decay_rate, num_layers=n_blocks, force_is_backbone=n_blocks > 0, chunked_blocks=chunked_blocks
        )
        no_decay = name.endswith(".bias") or "norm" in name or "gamma" in name
        if "patch_embed" in name:
            lr_multiplier *= patch_embed_lr_mult
        groups.append(
            {
                "name": name,
                "params": param,
                "is_last_layer": "last_layer" in name,
                "lr_multiplier": lr_multiplier,
                "wd_multiplier": 0.0 if no_decay else 1.0,
            }
        )
        logger.debug("%s: lr_multiplier %s, wd_multiplier %s", name, lr_multiplier, groups[-1]["wd_multiplier"])
    return groups


def fuse_params_groups(
    all_params_groups: Iterable[dict[str, Any]],
    keys: Sequence[str] = ("lr_multiplier", "wd_multiplier", "is_last_layer"),
) -> list[dict[str, Any]]:
    """Merges per-parameter groups that agree on ``keys`` into one group each (order of first appearance)."""
    fused: dict[tuple, dict[str, Any]] = defaultdict(lambda: {"params": []})
    for group in all_params_groups:
        identifier = tuple(group[key] for key in keys)
        target = fused[identifier]
        for key in keys:
            target[key] = group[key]
        target["params"].append(group["params"])
    return list(fused.values())
