"""The index arrays (``entries.npy``, ``class-ids.npy``, ...) that ImageNet-style datasets precompute once with
``dump_extra()`` so that opening the dataset does not scan millions of files."""

import os

import numpy as np

from dinov2.errors import MissingPathError


class ExtraFiles:
    """Mixin for datasets whose index arrays live in the folder ``self._extra_root``; ``_how_to_make_extra()`` is
    the Python expression that writes them, quoted by the error when one is missing."""

    _extra_root: str

    def _how_to_make_extra(self) -> str:
        raise NotImplementedError

    def _extra_path(self, name: str) -> str:
        return os.path.join(self._extra_root, name)

    def _load_extra(self, name: str) -> np.ndarray:
        """Memory-maps one index array."""
        path = self._extra_path(name)
        if not os.path.isfile(path):
            raise MissingPathError(f"{path} not found; generate the extra files once with {self._how_to_make_extra()}")
        return np.load(path, mmap_mode="r")
