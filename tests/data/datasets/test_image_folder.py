import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinov2.data import make_dataset
from dinov2.data.datasets import ImageFolder
from dinov2.data.datasets import image_folder as image_folder_module


@pytest.fixture
def count_scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every directory scan ImageFolder makes."""
    calls: list[str] = []
    real_scan = image_folder_module._scan_folder

    def counting_scan(root: str, labels: str):
        calls.append(root)
        return real_scan(root, labels)

    monkeypatch.setattr(image_folder_module, "_scan_folder", counting_scan)
    return calls


def _relpaths(dataset: ImageFolder) -> list[str]:
    return [os.path.relpath(dataset.get_image_path(i), dataset.root) for i in range(len(dataset))]


def test_class_subfolders_give_labels(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "dog" / "b.jpg", color=1)
    write_image(tmp_path / "dog" / "a.JPG", color=2)  # extensions in any case
    write_image(tmp_path / "dog" / "deep" / "c.png", color=3, fmt="PNG")  # nested inside a class
    write_image(tmp_path / "cat" / "x.Jpeg", color=4)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "cat" / ".hidden.jpg", color=5)
    (tmp_path / "empty_class").mkdir()
    dataset = ImageFolder(root=tmp_path)
    assert dataset.classes == ["cat", "dog"]
    assert _relpaths(dataset) == ["cat/x.Jpeg", "dog/a.JPG", "dog/b.jpg", "dog/deep/c.png"]
    assert [dataset.get_target(i) for i in range(4)] == [0, 1, 1, 1]
    assert dataset.get_targets().tolist() == [0, 1, 1, 1]
    image, target = dataset[1]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (12, 9) and target == 1


def test_flat_folder_has_no_labels(tmp_path: Path, write_image) -> None:
    for i in range(3):
        write_image(tmp_path / f"img_{i}.jpg", color=i)
    dataset = ImageFolder(root=tmp_path)
    assert len(dataset) == 3 and dataset.classes == []
    assert dataset.get_targets().tolist() == [-1, -1, -1]
    assert dataset[0][1] == -1
    assert [target for _, target in dataset] == [-1, -1, -1]  # plain iteration stops at the end
    assert dataset[-1][0].tobytes() == dataset[2][0].tobytes()
    with pytest.raises(IndexError, match="out of range"):
        dataset[3]


def test_nested_folder_without_classes(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "top.jpg")
    write_image(tmp_path / "2023" / "01" / "a.jpg", color=1)
    write_image(tmp_path / "2023" / "b.webp", color=2, fmt="WEBP")
    dataset = ImageFolder(root=tmp_path)
    assert _relpaths(dataset) == ["2023/01/a.jpg", "2023/b.webp", "top.jpg"]
    assert set(dataset.get_targets().tolist()) == {-1}


def test_label_modes(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "a" / "x.jpg")
    write_image(tmp_path / "b" / "y.jpg")
    assert ImageFolder(root=tmp_path, labels="none").get_targets().tolist() == [-1, -1]
    write_image(tmp_path / "top.jpg")
    with pytest.raises(ValueError, match="labels=folder"):
        ImageFolder(root=tmp_path, labels="folder")
    with pytest.raises(ValueError, match="labels"):
        ImageFolder(root=tmp_path, labels="classes")


def test_scan_is_cached_and_reused(tmp_path: Path, write_image, count_scans: list[str]) -> None:
    root = tmp_path / "images"
    for i in range(3):
        write_image(root / "cls" / "sub" / f"{i}.jpg", color=i)
    first = ImageFolder(root=root)
    assert len(count_scans) == 1
    # A deep edit leaves the root and its direct subfolders untouched, so the cached list is used as is.
    (root / "cls" / "sub" / "2.jpg").unlink()
    second = ImageFolder(root=root)
    assert len(count_scans) == 1
    assert _relpaths(second) == _relpaths(first) == ["cls/sub/0.jpg", "cls/sub/1.jpg", "cls/sub/2.jpg"]
    assert second.cache_dir == first.cache_dir and (first.cache_dir / "meta.json").is_file()
    # The missing file is then an unreadable sample, replaced (wrapping around) by sample 0.
    image, _ = second[2]
    assert np.array_equal(np.asarray(image), np.asarray(second[0][0])) and second.num_unreadable == 1
    # rescan=True forces a new walk.
    third = ImageFolder(root=root, rescan=True)
    assert len(count_scans) == 2 and len(third) == 2


def test_cache_is_refreshed_when_a_class_folder_changes(tmp_path: Path, write_image, count_scans: list[str]) -> None:
    write_image(tmp_path / "a" / "0.jpg")
    ImageFolder(root=tmp_path)
    write_image(tmp_path / "a" / "1.jpg", color=1)
    stat = os.stat(tmp_path / "a")
    os.utime(tmp_path / "a", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse clocks: force a new mtime
    assert len(ImageFolder(root=tmp_path)) == 2
    assert len(count_scans) == 2


def test_cache_goes_to_extra_when_given(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "images" / "a.jpg")
    dataset = ImageFolder(root=tmp_path / "images", extra=tmp_path / "extra")
    assert dataset.cache_dir.parent == tmp_path / "extra"
    assert (dataset.cache_dir / "paths.npy").is_file()


def test_empty_or_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(root=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ImageFolder(root=tmp_path / "missing")


def test_dataset_string(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "a.jpg")
    dataset = make_dataset(dataset_str=f"ImageFolder:root={tmp_path}:labels=none:strict=true")
    assert isinstance(dataset, ImageFolder) and dataset.strict and len(dataset) == 1
