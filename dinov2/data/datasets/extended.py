"""Base class of the datasets: bytes in, (PIL RGB image, target) out, with unreadable files skipped."""

import logging
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchvision.datasets import VisionDataset

from dinov2.errors import DataError

from .decoders import ImageDataDecoder, TargetDecoder

logger = logging.getLogger(__name__)

__all__ = ["ExtendedVisionDataset"]

# A run of this many unreadable samples in a row means a wrong root or a broken disk, not a few bad files.
MAX_CONSECUTIVE_UNREADABLE = 64


class ExtendedVisionDataset(VisionDataset):
    """Subclasses provide ``get_image_data(i) -> bytes``, ``get_target(i)`` and ``__len__``.

    A sample whose image cannot be read or decoded (missing, truncated, not an image) must not kill a multi-day
    run: unless ``strict``, it is logged once with its path, the next readable sample (``i + 1``, ``i + 2``, ...,
    wrapping around) is returned in its place, and ``num_unreadable`` counts the distinct bad samples met by this
    process (each DataLoader worker counts its own; the log line carries the running count). ``strict=True``
    raises ``RuntimeError`` instead.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        transforms: Callable | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        *,
        strict: bool = False,
    ) -> None:
        super().__init__(root, transforms=transforms, transform=transform, target_transform=target_transform)
        self.strict = bool(strict)
        self._unreadable: set[int] = set()

    @abstractmethod
    def get_image_data(self, index: int) -> bytes:
        """The encoded bytes of sample ``index``."""

    @abstractmethod
    def get_target(self, index: int) -> Any:
        """The target of sample ``index`` (None when the dataset has no labels for it)."""

    @abstractmethod
    def __len__(self) -> int: ...

    def describe_sample(self, index: int) -> str:
        """Where sample ``index`` comes from (a path), for log and error messages."""
        return f"sample {index}"

    @property
    def num_unreadable(self) -> int:
        return len(self._unreadable)

    def _decode_image(self, index: int) -> Any:
        return ImageDataDecoder(self.get_image_data(index)).decode()

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        size = len(self)
        index = int(index)
        if index < 0:
            index += size
        if not 0 <= index < size:  # also ends Python's fallback iteration over __getitem__
            raise IndexError(f"sample index {index} out of range for a dataset of {size} samples")
        attempts = min(MAX_CONSECUTIVE_UNREADABLE, size)
        for attempt in range(attempts):
            current = (index + attempt) % size
            try:
                image = self._decode_image(current)
            except Exception as e:  # any failure to read or decode one file, whatever the library raises
                if self.strict:
                    raise RuntimeError(
                        f"can not read image for sample {current} ({self.describe_sample(current)}): {e!r}; "
                        "pass strict=False to skip unreadable files"
                    ) from e
                self._note_unreadable(current, e)
                continue
            target = TargetDecoder(self.get_target(current)).decode()
            if self.transforms is not None:
                image, target = self.transforms(image, target)
            return image, target
        what = f"all {size} samples are" if attempts == size else f"{attempts} consecutive samples starting at {index}"
        raise DataError(f"{what} unreadable ({self.describe_sample(index)}, ...); check the dataset root and its files")

    def _note_unreadable(self, index: int, error: Exception) -> None:
        if index in self._unreadable:
            return
        self._unreadable.add(index)
        logger.warning(
            "skipping unreadable image %s (sample %d): %r; the next sample replaces it. %d unreadable sample(s) so "
            "far in this process (strict=True raises instead)",
            self.describe_sample(index),
            index,
            error,
            len(self._unreadable),
        )
