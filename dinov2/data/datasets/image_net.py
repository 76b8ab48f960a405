"""ImageNet-1k in its official layout, indexed by precomputed "extra" numpy files."""

import csv
import logging
import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from .extended import ExtendedVisionDataset
from .extra_files import ExtraFiles

logger = logging.getLogger(__name__)

__all__ = ["ImageNet"]

_IMAGE_SUFFIX = ".JPEG"
_LENGTHS = {"train": 1_281_167, "val": 50_000, "test": 100_000}


class _Split(Enum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"

    @property
    def length(self) -> int:
        """Number of images of the official split."""
        return _LENGTHS[self.value]

    def get_dirname(self, class_id: str | None = None) -> str:
        return self.value if class_id is None else os.path.join(self.value, class_id)

    def get_image_relpath(self, actual_index: int, class_id: str | None = None) -> str:
        dirname = self.get_dirname(class_id)
        if self == _Split.TRAIN:
            basename = f"{class_id}_{actual_index}"
        else:  # VAL and TEST
            basename = f"ILSVRC2012_{self.value}_{actual_index:08d}"
        return os.path.join(dirname, basename + _IMAGE_SUFFIX)

    def parse_image_relpath(self, image_relpath: str) -> tuple[str, int]:
        """``(class_id, actual_index)`` of a TRAIN or VAL relative path (TEST paths carry no class)."""
        if self == _Split.TEST:
            raise ValueError("parse_image_relpath is not defined for the TEST split (its images have no class)")
        dirname, filename = os.path.split(image_relpath)
        class_id = os.path.basename(dirname)
        stem, _ = os.path.splitext(filename)
        try:
            actual_index = int(stem.rsplit("_", 1)[-1])
        except ValueError:
            raise ValueError(
                f"{image_relpath!r} does not follow ImageNet's naming ({self.get_image_relpath(1, 'n01440764')}); "
                "use the ImageFolder dataset for other folders"
            ) from None
        return class_id, actual_index


def _read_labels(labels_path: Path) -> dict[str, str]:
    """``{class_id: class_name}`` from labels.txt (CSV rows ``wnid,class name``)."""
    if not labels_path.is_file():
        raise FileNotFoundError(
            f"{labels_path} not found; ImageNet needs <root>/labels.txt with rows 'wnid,class name' (it can be made "
            "from LOC_synset_mapping.txt). For a plain folder of images use ImageFolder:root=... instead"
        )
    labels = {}
    with open(labels_path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if row:
                labels[row[0].strip()] = ",".join(row[1:]).strip()
    return labels


class ImageNet(ExtraFiles, ExtendedVisionDataset):
    """ImageNet-1k: ``<root>/{train,val}/<wnid>/*.JPEG``, ``<root>/test/*.JPEG`` and ``<root>/labels.txt``.

    The sample list lives in ``<extra>/entries-<SPLIT>.npy`` (plus ``class-ids-`` and ``class-names-``), made once
    with ``dump_extra()``. Subsets of the official splits are accepted (e.g. for small runs); pass
    ``check_length=True`` to insist on the full split.
    """

    Target = int
    Split = _Split

    def __init__(
        self,
        *,
        split: "ImageNet.Split",
        root: str | Path,
        extra: str | Path,
        transforms: Callable | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        strict: bool = False,
        check_length: bool = False,
    ) -> None:
        super().__init__(root, transforms, transform, target_transform, strict=strict)
        if not isinstance(split, _Split):
            raise TypeError(f"split={split!r} must be ImageNet.Split.TRAIN, VAL or TEST")
        self._extra_root = str(extra)
        self._split = split
        self._check_length = check_length
        self._entries: np.ndarray | None = None
        self._class_ids: np.ndarray | None = None
        self._class_names: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are re-opened lazily in the receiving process instead of being copied into the pickle.
        state = self.__dict__.copy()
        state.update(_entries=None, _class_ids=None, _class_names=None)
        return state

    @property
    def split(self) -> "ImageNet.Split":
        return self._split

    def _how_to_make_extra(self) -> str:
        return (
            f"ImageNet(split=ImageNet.Split.{self._split.name}, root={self.root!r}, "
            f"extra={self._extra_root!r}).dump_extra()"
        )

    @property
    def _entries_name(self) -> str:
        return f"entries-{self._split.name}.npy"

    @property
    def _class_ids_name(self) -> str:
        return f"class-ids-{self._split.name}.npy"

    @property
    def _class_names_name(self) -> str:
        return f"class-names-{self._split.name}.npy"

    def _get_entries(self) -> np.ndarray:
        if self._entries is None:
            self._entries = self._load_extra(self._entries_name)
        return self._entries

    def _get_class_ids(self) -> np.ndarray:
        if self._split == _Split.TEST:
            raise ValueError("the TEST split has no class ids")
        if self._class_ids is None:
            self._class_ids = self._load_extra(self._class_ids_name)
        return self._class_ids

    def _get_class_names(self) -> np.ndarray:
        if self._split == _Split.TEST:
            raise ValueError("the TEST split has no class names")
        if self._class_names is None:
            self._class_names = self._load_extra(self._class_names_name)
        return self._class_names

    def find_class_id(self, class_index: int) -> str:
        return str(self._get_class_ids()[class_index])

    def find_class_name(self, class_index: int) -> str:
        return str(self._get_class_names()[class_index])

    def _image_relpath(self, index: int) -> str:
        entry = self._get_entries()[index]
        class_id = None if self._split == _Split.TEST else str(entry["class_id"])
        return self._split.get_image_relpath(int(entry["actual_index"]), class_id)

    def describe_sample(self, index: int) -> str:
        return os.path.join(self.root, self._image_relpath(index))

    def get_image_data(self, index: int) -> bytes:
        with open(os.path.join(self.root, self._image_relpath(index)), mode="rb") as f:
            return f.read()

    def get_target(self, index: int) -> int | None:
        if self._split == _Split.TEST:
            return None
        return int(self._get_entries()[index]["class_index"])

    def get_targets(self) -> np.ndarray | None:
        if self._split == _Split.TEST:
            return None
        return self._get_entries()["class_index"]

    def get_class_id(self, index: int) -> str | None:
        return None if self._split == _Split.TEST else str(self._get_entries()[index]["class_id"])

    def get_class_name(self, index: int) -> str | None:
        return None if self._split == _Split.TEST else str(self._get_entries()[index]["class_name"])

    def __len__(self) -> int:
        length = len(self._get_entries())
        if self._check_length and length != self._split.length:
            raise RuntimeError(
                f"ImageNet {self._split.name} has {length} entries, expected the full split's {self._split.length}; "
                "pass check_length=False to use a subset"
            )
        return length

    def _scan_test_indices(self) -> list[int]:
        test_dir = Path(self.root) / self._split.get_dirname()
        prefix = f"ILSVRC2012_{self._split.value}_"
        indices = []
        for name in sorted(os.listdir(test_dir)):
            stem, ext = os.path.splitext(name)
            if ext == _IMAGE_SUFFIX and stem.startswith(prefix):
                indices.append(int(stem[len(prefix) :]))
        return indices

    def _dump_entries(self) -> None:
        if self._split == _Split.TEST:
            actual_indices = self._scan_test_indices()
            dtype = [("actual_index", "<u4"), ("class_index", "<u4"), ("class_id", "U1"), ("class_name", "U1")]
            entries = np.array(
                [(i, np.iinfo(np.uint32).max, "", "") for i in actual_indices], dtype=dtype
            )  # uint32(-1)
        else:
            labels = _read_labels(Path(self.root) / "labels.txt")
            # Class indices follow the sorted wnids of labels.txt: for the full dataset that is ImageFolder's order
            # (the standard ImageNet indices), and it stays consistent across splits when a subset lacks classes.
            class_ids = sorted(labels)
            class_index_of = {class_id: i for i, class_id in enumerate(class_ids)}
            split_dir = Path(self.root) / self._split.get_dirname()
            rows = []
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                if class_dir.name not in class_index_of:
                    raise ValueError(f"class folder {class_dir} is not listed in {Path(self.root) / 'labels.txt'}")
                for path in sorted(class_dir.iterdir()):
                    if path.suffix.lower() != _IMAGE_SUFFIX.lower():
                        continue
                    relpath = os.path.join(self._split.get_dirname(class_dir.name), path.name)
                    class_id, actual_index = self._split.parse_image_relpath(relpath)
                    rows.append((actual_index, class_index_of[class_id], class_id, labels[class_id]))
            if not rows:
                raise ValueError(f"no images found in {split_dir}/<wnid>/*{_IMAGE_SUFFIX}")
            id_width = max(len(r[2]) for r in rows)
            name_width = max(1, max(len(r[3]) for r in rows))
            dtype = [
                ("actual_index", "<u4"),
                ("class_index", "<u4"),
                ("class_id", f"U{id_width}"),
                ("class_name", f"U{name_width}"),
            ]
            entries = np.array(rows, dtype=dtype)
        logger.info("saving %d entries to %s", len(entries), self._extra_path(self._entries_name))
        os.makedirs(self._extra_root, exist_ok=True)
        np.save(self._extra_path(self._entries_name), entries)
        self._entries = None

    def _dump_class_ids_and_names(self) -> None:
        if self._split == _Split.TEST:
            return
        labels = _read_labels(Path(self.root) / "labels.txt")
        class_ids = sorted(labels)
        id_width = max(len(c) for c in class_ids)
        name_width = max(1, max(len(labels[c]) for c in class_ids))
        np.save(self._extra_path(self._class_ids_name), np.array(class_ids, dtype=f"U{id_width}"))
        np.save(
            self._extra_path(self._class_names_name), np.array([labels[c] for c in class_ids], dtype=f"U{name_width}")
        )
        self._class_ids = self._class_names = None

    def dump_extra(self) -> None:
        """Writes ``entries-<SPLIT>.npy`` (and for TRAIN/VAL ``class-ids-`` and ``class-names-<SPLIT>.npy``)."""
        self._dump_entries()
        self._dump_class_ids_and_names()
