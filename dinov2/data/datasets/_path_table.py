"""A compact, fork-friendly list of file paths (one UTF-8 byte blob plus offsets, numpy, mmap-able), and the base
of the datasets whose samples are image files listed in one (``FileList``, ``ImageFolder``).

Millions of Python strings would cost about a gigabyte and be copied page by page into every forked DataLoader
worker (reference counting writes to them); two numpy arrays cost the bytes themselves and are shared.
"""

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .extended import ExtendedVisionDataset

__all__ = ["PathTable", "PathTableDataset"]


class PathTable:
    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        if offsets.ndim != 1 or len(offsets) == 0:
            raise ValueError("PathTable offsets must be a 1-D array starting with 0")
        self.blob = blob  # [total_bytes] uint8
        self.offsets = offsets  # [N + 1] int64

    @classmethod
    def from_paths(cls, paths: Iterable[str]) -> "PathTable":
        encoded = [os.fsencode(p) for p in paths]
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))  # [N]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)  # [N + 1]
        np.cumsum(lengths, out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()  # [total_bytes]
        return cls(blob, offsets)

    def save(self, directory: Path) -> None:
        np.save(directory / "paths.npy", self.blob)
        np.save(directory / "offsets.npy", self.offsets)

    @classmethod
    def load(cls, directory: Path) -> "PathTable":
        return cls(np.load(directory / "paths.npy", mmap_mode="r"), np.load(directory / "offsets.npy", mmap_mode="r"))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return os.fsdecode(self.blob[start:stop].tobytes())

    def tolist(self) -> list[str]:
        return [self[i] for i in range(len(self))]


class PathTableDataset(ExtendedVisionDataset):
    """Sample ``i`` is the image file ``root / _paths[i]`` with integer target ``_targets[i]`` (-1: no label).

    Subclasses only find the files: their ``__init__`` sets ``_paths`` (a ``PathTable`` of paths relative to
    ``root``) and ``_targets`` (``[N]`` int64, possibly memory-mapped).
    """

    _paths: PathTable
    _targets: np.ndarray

    def get_image_path(self, index: int) -> str:
        return os.path.join(self.root, self._paths[index])

    def describe_sample(self, index: int) -> str:
        return self.get_image_path(index)

    def get_image_data(self, index: int) -> bytes:
        with open(self.get_image_path(index), mode="rb") as f:
            return f.read()

    def get_target(self, index: int) -> int:
        return int(self._targets[index])

    def get_targets(self) -> np.ndarray:
        return np.asarray(self._targets)

    def __len__(self) -> int:
        return len(self._paths)
