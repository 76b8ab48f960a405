"""Key remapping between checkpoint layouts of the ViT backbone.

Training runs group the blocks into ``BlockChunk``s for FSDP (``blocks.<chunk>.<i>.*``, ``i`` the global block
index) while the released/hub models are flat (``blocks.<i>.*``). Loading one into the other with ``strict=False``
would leave the weights silently random (dinov2 #210, #235), so the keys are rewritten to the target model's layout
instead.
"""

import re
from collections.abc import Iterable, Mapping

from torch import Tensor, nn

__all__ = ["checkpoint_filter_fn", "strip_prefixes", "to_flat_block_keys"]

_CHUNKED_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_FLAT_KEY = re.compile(r"^blocks\.(\d+)\.(\D.*)$")

# Leading key components added by wrappers: DDP/DataParallel ("module."), SSLMetaArch ("backbone."),
# torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "backbone.", "_orig_mod.")


def strip_prefixes(state_dict: Mapping[str, Tensor], prefixes: Iterable[str] = _WRAPPER_PREFIXES) -> dict[str, Tensor]:
    """Removes wrapper prefixes from the *start* of each key, repeatedly (``module.backbone.x`` -> ``x``).

    Only leading components are removed: a key such as ``blocks.0.attn.module.x`` is left alone (a substring
    replacement would mangle it).
    """
    prefixes = tuple(prefixes)
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    stripped = True
        out[key] = value
    return out


def to_flat_block_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``blocks.<chunk>.<i>.rest`` -> ``blocks.<i>.rest``; other keys unchanged."""
    out = {}
    for key, value in state_dict.items():
        match = _CHUNKED_KEY.match(key)
        out[f"blocks.{match.group(2)}.{match.group(3)}" if match else key] = value
    return out


def _chunk_of_block(model_keys: Iterable[str]) -> dict[int, int] | None:
    """Global block index -> chunk index for a chunked model, None for a flat one."""
    chunk_of: dict[int, int] = {}
    for key in model_keys:
        match = _CHUNKED_KEY.match(key)
        if match:
            chunk_of[int(match.group(2))] = int(match.group(1))
    return chunk_of or None


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rewrites the block keys of a backbone ``state_dict`` to the layout of ``model`` (chunked or flat, any chunk
    count). Keys are matched by global block index, so outputs are unchanged by the conversion."""
    flat = to_flat_block_keys(state_dict)
    chunk_of = _chunk_of_block(model.state_dict().keys())
    if chunk_of is None:
        return flat
    out = {}
    for key, value in flat.items():
        match = _FLAT_KEY.match(key)
        if match and int(match.group(1)) in chunk_of:
            index = int(match.group(1))
            key = f"blocks.{chunk_of[index]}.{index}.{match.group(2)}"
        out[key] = value
    return out
