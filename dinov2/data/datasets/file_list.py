"""Images listed in a text file: one path per line, optionally followed by a tab and an integer label."""

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dinov2.errors import DataError, MissingPathError

from ._path_table import PathTable, PathTableDataset

logger = logging.getLogger(__name__)

__all__ = ["FileList"]


def _read_list(path: Path) -> tuple[list[str], list[int]]:
    paths, targets = [], []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line_number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) > 2:
                raise DataError(f"{path}:{line_number}: expected 'path' or 'path<TAB>label', got {len(fields)} fields")
            if len(fields) == 2:
                try:
                    targets.append(int(fields[1]))
                except ValueError:
                    raise DataError(
                        f"{path}:{line_number}: label {fields[1]!r} after the tab is not an integer"
                    ) from None
            else:
                targets.append(-1)
            paths.append(fields[0])
    return paths, targets


class FileList(PathTableDataset):
    """The images named in ``path`` (a UTF-8 text file), in file order.

    Each non-empty line is ``image_path`` or ``image_path<TAB>label`` (integer; -1 when absent). Relative image
    paths are resolved against ``root`` when given, else against the list file's directory.
    """

    def __init__(
        self,
        *,
        path: str | Path,
        root: str | Path | None = None,
        transforms: Callable | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        strict: bool = False,
    ) -> None:
        list_path = Path(path)
        if not list_path.is_file():
            raise MissingPathError(f"FileList path={list_path} is not a file (one image path per line)")
        root = list_path.resolve().parent if root is None else Path(root)
        super().__init__(root, transforms, transform, target_transform, strict=strict)
        self.list_path = str(list_path)
        path_list, target_list = _read_list(list_path)
        if not path_list:
            raise DataError(f"FileList {list_path} lists no images")
        self._paths = PathTable.from_paths(path_list)
        self._targets = np.asarray(target_list, dtype=np.int64)  # [N]
        logger.info("FileList %s: %d images", list_path, len(path_list))
