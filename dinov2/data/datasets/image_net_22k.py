"""ImageNet-22k stored as one uncompressed tar file per class, read by byte range."""

import gzip
import logging
import mmap
import os
import tarfile
from collections import OrderedDict
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from .extended import ExtendedVisionDataset
from .extra_files import ExtraFiles

logger = logging.getLogger(__name__)

__all__ = ["ImageNet22k"]

_TAR_HEADER_SIZE = 512
# An invalid image, left out of the entries as by the official DINOv2 code so that both entry files agree.
_SKIPPED_FILENAMES = frozenset({"n06470073_47249.JPEG"})
_GZIP_MAGIC = b"\x1f\x8b"


class _Split(Enum):
    TRAIN = "train"
    VAL = "val"

    @property
    def length(self) -> int:
        return {_Split.TRAIN: 11_797_647, _Split.VAL: 561_050}[self]

    def entries_path(self) -> str:
        return f"imagenet21kp_{self.value}.txt"


class ImageNet22k(ExtraFiles, ExtendedVisionDataset):
    """``<root>/<class_id>.tar`` per class, indexed by ``<extra>/entries.npy`` and ``<extra>/class-ids.npy``.

    ``dump_extra()`` builds those files straight from the tar archives (no block listings needed); offsets are
    stored as uint64, so archives over 4 GiB work. Entry files written by the official DINOv2 code (uint32
    offsets) load too, so existing indexes can be reused. Each image is read as
    ``tar[start_offset + 512 : end_offset]`` and gunzipped when it was stored compressed.
    """

    Labels = int

    def __init__(
        self,
        *,
        root: str | Path,
        extra: str | Path,
        transforms: Callable | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        mmap_cache_size: int = 16,
        strict: bool = False,
    ) -> None:
        super().__init__(root, transforms, transform, target_transform, strict=strict)
        if mmap_cache_size < 1:
            raise ValueError(f"mmap_cache_size={mmap_cache_size} must be >= 1")
        if mmap_cache_size > 16:
            logger.warning("mmap_cache_size=%d above 16 may exhaust file descriptors", mmap_cache_size)
        self._extra_root = str(extra)
        self._mmap_cache_size = mmap_cache_size
        self._entries: np.ndarray | None = None
        self._class_ids: np.ndarray | None = None
        self._mmaps: OrderedDict[str, mmap.mmap] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        # Open memory maps cannot be pickled; each process opens its own lazily.
        state = self.__dict__.copy()
        state.update(_entries=None, _class_ids=None, _mmaps=OrderedDict())
        return state

    def _how_to_make_extra(self) -> str:
        return f"ImageNet22k(root={self.root!r}, extra={self._extra_root!r}).dump_extra()"

    def _get_entries(self) -> np.ndarray:
        if self._entries is None:
            self._entries = self._load_extra("entries.npy")
        return self._entries

    def _get_class_ids(self) -> np.ndarray:
        if self._class_ids is None:
            self._class_ids = self._load_extra("class-ids.npy")
        return self._class_ids

    def _tarball_path(self, class_id: str) -> str:
        return os.path.join(self.root, f"{class_id}.tar")

    def _get_tarball(self, class_id: str) -> mmap.mmap:
        mapped = self._mmaps.get(class_id)
        if mapped is not None:
            self._mmaps.move_to_end(class_id)
            return mapped
        with open(self._tarball_path(class_id), "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._mmaps[class_id] = mapped
        if len(self._mmaps) > self._mmap_cache_size:
            _, oldest = self._mmaps.popitem(last=False)
            oldest.close()
        return mapped

    def describe_sample(self, index: int) -> str:
        entry = self._get_entries()[index]
        return f"{self._tarball_path(str(entry['class_id']))}:{entry['filename']}"

    def get_image_data(self, index: int) -> bytes:
        entry = self._get_entries()[index]
        tarball = self._get_tarball(str(entry["class_id"]))
        data = tarball[int(entry["start_offset"]) + _TAR_HEADER_SIZE : int(entry["end_offset"])]
        if data[:2] == _GZIP_MAGIC:
            # Any gzipped member is decompressed, whatever its index.
            data = gzip.decompress(data)
        return data

    def get_target(self, index: int) -> int:
        return int(self._get_entries()[index]["class_index"])

    def get_targets(self) -> np.ndarray:
        return self._get_entries()["class_index"]

    def get_class_id(self, index: int) -> str:
        return str(self._get_entries()[index]["class_id"])

    def get_class_ids(self) -> np.ndarray:
        return self._get_entries()["class_id"]

    def find_class_id(self, class_index: int) -> str:
        return str(self._get_class_ids()[class_index])

    def __len__(self) -> int:
        return len(self._get_entries())

    def dump_extra(self, root: str | Path | None = None) -> None:
        """Writes ``entries.npy`` and ``class-ids.npy`` by listing every ``<root>/<class_id>.tar``.

        Class indices follow the sorted class ids; within a class, entries keep the archive order.
        """
        root = Path(self.root if root is None else root)
        tarballs = sorted(p for p in root.iterdir() if p.suffix == ".tar" and p.is_file())
        if not tarballs:
            raise ValueError(f"no <class_id>.tar files found in {root}")
        rows = []
        for class_index, tar_path in enumerate(tarballs):
            class_id = tar_path.stem
            with tarfile.open(tar_path, mode="r:") as archive:
                for member in archive:
                    if not member.isfile() or os.path.basename(member.name) in _SKIPPED_FILENAMES:
                        continue
                    # Reading drops 512 bytes after start_offset, so point start at the last header block.
                    start = member.offset_data - _TAR_HEADER_SIZE
                    rows.append((class_index, class_id, start, member.offset_data + member.size, member.name))
        class_ids = [p.stem for p in tarballs]
        id_width = max(len(c) for c in class_ids)
        name_width = max(1, max((len(r[4]) for r in rows), default=1))
        dtype = [
            ("class_index", "<u4"),
            ("class_id", f"U{id_width}"),
            ("start_offset", "<u8"),
            ("end_offset", "<u8"),
            ("filename", f"U{name_width}"),
        ]
        os.makedirs(self._extra_root, exist_ok=True)
        logger.info("saving %d entries of %d classes to %s", len(rows), len(class_ids), self._extra_root)
        np.save(self._extra_path("entries.npy"), np.array(rows, dtype=dtype))
        np.save(self._extra_path("class-ids.npy"), np.array(class_ids, dtype=f"U{id_width}"))
        self._entries = self._class_ids = None
