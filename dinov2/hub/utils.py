"""Shared helpers of the torch.hub entrypoints: checkpoint names and URLs, padding, and the one weights loader."""

import itertools
import math
import os
import pickle
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CenterPadding", "load_state_dict_from_url_or_path"]

_DINOV2_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"


def _make_dinov2_model_name(arch_name: str, patch_size: int, num_register_tokens: int = 0) -> str:
    """``("vit_small", 14, 4) -> "dinov2_vits14_reg4"``: the released checkpoints' naming scheme."""
    compact_arch_name = arch_name.replace("_", "")[:4]
    registers_suffix = f"_reg{num_register_tokens}" if num_register_tokens else ""
    return f"dinov2_{compact_arch_name}{patch_size}{registers_suffix}"


class CenterPadding(nn.Module):
    """Zero-pads each spatial dim of ``[B, C, *spatial]`` up to a multiple of ``multiple`` (half before, rest after)."""

    def __init__(self, multiple: int) -> None:
        super().__init__()
        self.multiple = multiple

    def _get_pad(self, size: int) -> tuple[int, int]:
        new_size = math.ceil(size / self.multiple) * self.multiple
        pad_size = new_size - size
        pad_size_left = pad_size // 2
        pad_size_right = pad_size - pad_size_left
        return pad_size_left, pad_size_right

    @torch.inference_mode()
    def forward(self, x: Tensor) -> Tensor:
        # F.pad takes (last dim left, last dim right, second-to-last left, ...): walk the spatial dims backwards.
        pads = list(itertools.chain.from_iterable(self._get_pad(m) for m in x.shape[:1:-1]))
        return F.pad(x, pads)


def _is_url(url_or_path: str) -> bool:
    return urlparse(url_or_path).scheme in ("http", "https", "ftp", "file")


def hub_cache_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (and first looks for) the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _torch_load(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(
            f"{path} holds Python objects other than tensors and plain containers, which weights_only loading "
            "refuses; if you trust the file, load it with torch.load(..., weights_only=False) and pass the state dict"
        ) from e


def load_state_dict_from_url_or_path(url_or_path: str) -> dict:
    """Loads a checkpoint on CPU with ``weights_only=True`` from a local path or a URL.

    A URL goes through ``torch.hub.load_state_dict_from_url``, so a file already in torch.hub's cache
    (``<hub dir>/checkpoints/<file name>``, hub dir = ``$TORCH_HOME/hub``) is used without any network access.
    On download failure a RuntimeError names the URL and the exact cache path where the file can be placed by hand.
    """
    url_or_path = os.fspath(url_or_path)
    if not _is_url(url_or_path):
        path = Path(url_or_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} does not exist; pass an existing path or a URL")
        return _torch_load(path)
    try:
        return torch.hub.load_state_dict_from_url(url_or_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(
            f"{url_or_path} (cached at {hub_cache_path(url_or_path)}) is not a weights-only checkpoint"
        ) from e
    except OSError as e:  # URLError, HTTPError, timeouts and connection errors are all OSErrors
        raise RuntimeError(
            f"could not download {url_or_path} ({e}). Without internet access, download the file elsewhere and "
            f"place it at {hub_cache_path(url_or_path)} (torch.hub's cache; set TORCH_HOME to move it), or pass "
            "the local file path as weights"
        ) from e
