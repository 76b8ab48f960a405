"""Every way a weight file is read: a local path, a URL, or a file already in torch.hub's cache.

Files are read with ``weights_only=True``: tensors and plain values only, never code (a pickled object's
``__reduce__`` can run anything). Errors name the file and say what it holds or lacks. The hub builders, training
(``student.pretrained_weights``), the eval CLIs and the tools all load through here.
"""

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from dinov2.errors import MissingPathError, WeightsError
from dinov2.models.checkpoint_filter import checkpoint_filter_fn, strip_prefixes

__all__ = [
    "hub_cache_path",
    "is_url",
    "load_checkpoint_file",
    "load_state_dict_from_url_or_path",
    "load_pretrained_weights",
]

logger = logging.getLogger("dinov2")

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6 is a zip archive


def is_url(url_or_path: str) -> bool:
    return urlparse(url_or_path).scheme in ("http", "https", "ftp", "file")


def hub_cache_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (and first looks for) the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _unreadable(path: Path, error: Exception, shown_as: str) -> WeightsError:
    """What is wrong with a file ``torch.load`` refused, judged from its size and first bytes."""
    size = path.stat().st_size if path.is_file() else 0
    with open(path, "rb") as f:
        header = f.read(4)
    refused_objects = isinstance(error, pickle.UnpicklingError) and (header == _ZIP_MAGIC or header[:1] == b"\x80")
    if size == 0:
        reason = "is empty (0 bytes): an interrupted copy or download? Fetch it again"
    elif refused_objects:
        reason = (
            "holds Python objects other than tensors and plain values (a pickled model or optimizer?), which are "
            "never unpickled here because unpickling can run code. If the file is yours, save its state dict "
            "instead: torch.save(model.state_dict(), path)"
        )
    elif header == _ZIP_MAGIC:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        reason = f"is a damaged or truncated PyTorch checkpoint ({size} bytes; {detail}): copy it again"
    else:
        reason = f"is not a PyTorch weights file ({size} bytes, starting with {header!r})"
    return WeightsError(f"{shown_as} {reason}")


def load_checkpoint_file(path: str | os.PathLike, shown_as: str | None = None) -> dict:
    """A local checkpoint file read on CPU with ``weights_only=True``; an unreadable file is a WeightsError saying
    why (named ``shown_as``, default its path)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # garbage makes the unpickler fail in many ways (IndexError, EOFError, ...)
        raise _unreadable(path, e, shown_as or str(path)) from e


def load_state_dict_from_url_or_path(url_or_path: str | os.PathLike) -> dict:
    """Reads a checkpoint on CPU with ``weights_only=True`` from a local path or a URL.

    A URL goes through ``torch.hub.load_state_dict_from_url``, so a file already in torch.hub's cache
    (``<hub dir>/checkpoints/<file name>``, hub dir = ``$TORCH_HOME/hub``) is used without any network access.
    On download failure the error names the URL and the exact cache path where the file can be placed by hand.
    """
    url_or_path = os.fspath(url_or_path)
    if not is_url(url_or_path):
        path = Path(url_or_path).expanduser()
        if not path.is_file():
            raise MissingPathError(f"weights file {path} does not exist; pass an existing path or a URL")
        return load_checkpoint_file(path)
    cached = hub_cache_path(url_or_path)
    if cached.is_file():
        return load_checkpoint_file(cached, shown_as=f"{url_or_path} (cached at {cached})")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url_or_path, str(cached), progress=True)
    except OSError as e:  # URLError, HTTPError, timeouts and connection errors are all OSErrors
        raise WeightsError(
            f"could not download {url_or_path} ({e}). Without internet access, download the file elsewhere and "
            f"place it at {cached} (torch.hub's cache; set TORCH_HOME to move it), or pass the local file path"
        ) from e
    return load_checkpoint_file(cached, shown_as=f"{url_or_path} (downloaded to {cached})")


def load_pretrained_weights(
    model: nn.Module, pretrained_weights: str | Mapping[str, Any], checkpoint_key: str | None, *, name: str = ""
) -> None:
    """Loads backbone weights into ``model``, failing loudly instead of leaving them random.

    ``pretrained_weights`` is a path or URL, or a checkpoint already read (then ``name`` names it in messages).
    Takes ``state[checkpoint_key]`` when that key exists (e.g. ``"teacher"`` in the training's
    ``teacher_checkpoint.pth``), strips leading ``module.``/``backbone.``/``_orig_mod.`` components, converts
    chunked <-> flat block keys to the model's layout, then loads strictly: missing model keys and shape mismatches
    raise an error listing them; extra keys (heads of a full training checkpoint) are ignored and logged.
    """
    if isinstance(pretrained_weights, Mapping):
        state_dict, name = pretrained_weights, name or "the given checkpoint"
    else:
        state_dict, name = load_state_dict_from_url_or_path(pretrained_weights), str(pretrained_weights)
    if checkpoint_key is not None and checkpoint_key in state_dict:
        logger.info("Take key %s in provided checkpoint dict", checkpoint_key)
        state_dict = state_dict[checkpoint_key]
    tensors = {k: v for k, v in state_dict.items() if torch.is_tensor(v)} if isinstance(state_dict, Mapping) else {}
    if not tensors:
        raise WeightsError(f"{name} holds no tensors (at its top level or under {checkpoint_key!r})")
    state_dict = checkpoint_filter_fn(strip_prefixes(tensors), model)
    model_state = model.state_dict()
    missing = [k for k in model_state if k not in state_dict]
    if missing:
        shown = ", ".join(missing[:20]) + (f", ... ({len(missing)} in all)" if len(missing) > 20 else "")
        raise WeightsError(
            f"{name} lacks {len(missing)} keys of the model: {shown}. Check that the architecture "
            "(arch, ffn_layer, num_register_tokens, layerscale) matches the checkpoint and that checkpoint_key "
            f"({checkpoint_key!r}) selects the backbone"
        )
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in model_state.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if mismatched:
        raise WeightsError(
            f"{name} has tensors of the wrong shape: {'; '.join(mismatched[:10])}. For the released "
            "weights build the model with img_size=518 and patch_size=14 (pos_embed has 1370 rows)"
        )
    unexpected = [k for k in state_dict if k not in model_state]
    if unexpected:
        logger.info("Ignoring %d checkpoint keys that are not part of the model: %s", len(unexpected), unexpected[:10])
    model.load_state_dict({k: state_dict[k] for k in model_state}, strict=True)
    logger.info("Pretrained weights found at %s and loaded", name)
