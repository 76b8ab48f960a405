"""The index arrays (``entries.npy``, ``class-ids.npy``, ...) that ImageNet-style datasets precompute once with
``dump_extra()`` so that opening the dataset does not scan millions of files."""

import os

import numpy as np

from dinov2.errors import MissingPathError


def load_extra(extra_root: str, name: str, *, how_to_make: str) -> np.ndarray:
    """Memory-maps ``extra_root/name``; if missing, the error says ``how_to_make`` it (a Python expression)."""
    path = os.path.join(extra_root, name)
    if not os.path.isfile(path):
        raise MissingPathError(f"{path} not found; generate the extra files once with {how_to_make}")
    return np.load(path, mmap_mode="r")
