from pathlib import Path

import pytest

from dinov2.data import make_dataset
from dinov2.data.datasets import FileList


def test_paths_labels_and_roots(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "imgs" / "a.jpg", color=1)
    write_image(tmp_path / "imgs" / "b.png", color=2, fmt="PNG")
    absolute = write_image(tmp_path / "elsewhere" / "c.jpg", color=3)
    list_path = tmp_path / "list.txt"
    list_path.write_text(f"imgs/a.jpg\t3\n\nimgs/b.png\n{absolute}\t0\n")
    dataset = FileList(path=list_path)
    assert len(dataset) == 3
    assert dataset.get_targets().tolist() == [3, -1, 0]
    assert dataset.get_image_path(0) == str(tmp_path / "imgs" / "a.jpg")
    assert dataset.get_image_path(2) == str(absolute)
    image, target = dataset[1]
    assert image.mode == "RGB" and target == -1
    rooted = FileList(path=list_path, root=tmp_path / "imgs" / "..")
    assert rooted[0][1] == 3


def test_bad_lines_are_errors_naming_the_line(tmp_path: Path) -> None:
    list_path = tmp_path / "list.txt"
    list_path.write_text("a.jpg\tcat\n")
    with pytest.raises(ValueError, match=r"list.txt:1: label 'cat'"):
        FileList(path=list_path)
    list_path.write_text("\n\n")
    with pytest.raises(ValueError, match="no images"):
        FileList(path=list_path)
    with pytest.raises(FileNotFoundError):
        FileList(path=tmp_path / "missing.txt")


def test_dataset_string(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "a.jpg")
    (tmp_path / "list.txt").write_text("a.jpg\t1\n")
    dataset = make_dataset(dataset_str=f"FileList:path={tmp_path / 'list.txt'}")
    assert isinstance(dataset, FileList) and dataset[0][1] == 1
