"""Any folder of images, with or without class subfolders; the file list is scanned once and cached."""

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dinov2.errors import DataError, MissingPathError

from ._path_table import PathTable, PathTableDataset

logger = logging.getLogger(__name__)

__all__ = ["ImageFolder", "IMAGE_EXTENSIONS", "default_cache_dir"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LabelMode = Literal["auto", "folder", "none"]
_CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$DINOV2_CACHE_DIR`` or ``~/.cache/dinov2``: where scans go when no ``extra`` directory is given."""
    return Path(os.environ.get("DINOV2_CACHE_DIR") or Path.home() / ".cache" / "dinov2")


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(directory: str, relative_to: str) -> list[str]:
    """Relative paths of all images under ``directory`` (symlinks followed, loops and hidden entries skipped)."""
    found = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, relative_to)
        for name in filenames:
            if _is_image(name):
                found.append(os.path.normpath(os.path.join(rel_dir, name)))
    return found


def _scan_folder(root: str, labels: LabelMode) -> tuple[list[str], list[int], list[str]]:
    """Sorted relative image paths, their labels (-1 without classes) and the sorted class names."""
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    top_images = [e.name for e in entries if e.is_file() and _is_image(e.name)]
    subdirs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    if labels == "folder" and top_images:
        raise DataError(
            f"ImageFolder root {root} has images at its top level ({top_images[0]}, ...) but labels=folder expects "
            "only class subfolders; use labels=auto or labels=none"
        )
    use_classes = labels == "folder" or (labels == "auto" and not top_images)
    if not use_classes:
        paths = sorted(_walk_images(root, root))
        return paths, [-1] * len(paths), []
    paths, targets, classes = [], [], []
    for class_name in subdirs:
        class_paths = sorted(_walk_images(os.path.join(root, class_name), root))
        if not class_paths:
            continue
        targets += [len(classes)] * len(class_paths)
        paths += class_paths
        classes.append(class_name)
    return paths, targets, classes


def _fingerprint(root: str) -> dict[str, int]:
    """Modification times of the root and its direct subfolders: cheap, and changed by adding or removing files in
    a flat folder or a class folder (deeper edits are not seen; pass rescan=true after those)."""
    stamps = {".": os.stat(root).st_mtime_ns}
    with os.scandir(root) as it:
        for entry in it:
            if entry.is_dir() and not entry.name.startswith("."):
                stamps[entry.name] = entry.stat().st_mtime_ns
    return stamps


class ImageFolder(PathTableDataset):
    """Every image under ``root`` (extensions in ``IMAGE_EXTENSIONS``, any case; hidden files skipped).

    Labels: with ``labels="auto"``, a root holding only subfolders is a classification layout (class = top-level
    subfolder, sorted names, images at any depth below it), while a root with images at its top level has no
    classes (targets are -1, fine for pretraining). ``labels="folder"`` or ``"none"`` force either reading.

    The sorted file list is scanned once and cached under ``extra`` (default: ``default_cache_dir()``), keyed by the
    root's real path, so a 10M-image folder is not walked again at every start; the cache is refreshed when the
    root or one of its direct subfolders changes, or when ``rescan=True``.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        extra: str | Path | None = None,
        labels: LabelMode = "auto",
        rescan: bool = False,
        transforms: Callable | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        strict: bool = False,
    ) -> None:
        super().__init__(root, transforms, transform, target_transform, strict=strict)
        if labels not in ("auto", "folder", "none"):
            raise DataError(f"ImageFolder labels={labels!r} must be one of 'auto', 'folder', 'none'")
        if not os.path.isdir(self.root):
            raise MissingPathError(f"ImageFolder root {self.root} is not a directory")
        self._labels_mode = labels
        cache_root = Path(extra) if extra is not None else default_cache_dir()
        key = hashlib.sha1(f"{os.path.realpath(self.root)}|{labels}|{IMAGE_EXTENSIONS}".encode()).hexdigest()[:16]
        self.cache_dir = cache_root / f"image-folder-{key}"
        self._paths, self._targets, self.classes = self._load_or_scan(rescan)
        if len(self._paths) == 0:
            raise DataError(f"ImageFolder found no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    def _load_or_scan(self, rescan: bool) -> tuple[PathTable, np.ndarray, list[str]]:
        fingerprint = _fingerprint(self.root)
        meta_path = self.cache_dir / "meta.json"
        if not rescan and meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("version") == _CACHE_VERSION and meta.get("fingerprint") == fingerprint:
                    paths = PathTable.load(self.cache_dir)
                    targets = np.load(self.cache_dir / "targets.npy", mmap_mode="r")
                    logger.info("ImageFolder %s: %d images from the cached scan %s", self.root, len(paths), meta_path)
                    return paths, targets, list(meta["classes"])
                logger.info("ImageFolder %s changed since the cached scan; scanning again", self.root)
            except (OSError, ValueError, KeyError) as e:
                logger.warning("ignoring unreadable ImageFolder cache %s (%r); scanning again", self.cache_dir, e)
        logger.info("ImageFolder: scanning %s", self.root)
        path_list, target_list, classes = _scan_folder(self.root, self._labels_mode)
        paths = PathTable.from_paths(path_list)
        targets = np.asarray(target_list, dtype=np.int64)  # [N]
        meta = {
            "version": _CACHE_VERSION,
            "root": os.path.realpath(self.root),
            "labels": self._labels_mode,
            "classes": classes,
            "num_images": len(path_list),
            "fingerprint": fingerprint,
        }
        self._write_cache(paths, targets, meta)
        logger.info("ImageFolder %s: %d images in %d classes", self.root, len(path_list), len(classes))
        return paths, targets, classes

    def _write_cache(self, paths: PathTable, targets: np.ndarray, meta: dict[str, Any]) -> None:
        """Writes into a private directory renamed into place, so concurrent ranks never see half a cache."""
        tmp = self.cache_dir.with_name(f"{self.cache_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir(parents=True)
            paths.save(tmp)
            np.save(tmp / "targets.npy", targets)
            (tmp / "meta.json").write_text(json.dumps(meta))
            if self.cache_dir.exists():
                stale = tmp.with_name(tmp.name.replace(".tmp-", ".old-"))
                os.rename(self.cache_dir, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(tmp, self.cache_dir)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if (self.cache_dir / "meta.json").is_file():
                logger.info("another process cached the ImageFolder scan in %s first", self.cache_dir)
            else:
                logger.warning("could not cache the ImageFolder scan in %s (%r); next start rescans", self.cache_dir, e)
