from pathlib import Path

import numpy as np
import pytest

from dinov2.data import make_dataset
from dinov2.data.datasets import ImageNet


@pytest.fixture
def imagenet_root(tmp_path: Path, write_image) -> Path:
    """A subset of ImageNet's layout: 2 of the 3 classes of labels.txt, a few images per split."""
    root = tmp_path / "in1k"
    write_image(root / "train" / "n02" / "n02_7.JPEG", color=1)
    write_image(root / "train" / "n02" / "n02_12.JPEG", color=2)
    write_image(root / "train" / "n01" / "n01_3.JPEG", color=3)
    write_image(root / "val" / "n02" / "ILSVRC2012_val_00000004.JPEG", color=4)
    write_image(root / "test" / "ILSVRC2012_test_00000009.JPEG", color=5)
    write_image(root / "test" / "ILSVRC2012_test_00000002.JPEG", color=6)
    (root / "labels.txt").write_text("n01,tench\nn02,goldfish\nn03,great white shark\n")
    return root


def _dump_all(root: Path, extra: Path) -> None:
    for split in ImageNet.Split:
        ImageNet(split=split, root=root, extra=extra).dump_extra()


def test_split_paths() -> None:
    assert ImageNet.Split.TRAIN.get_image_relpath(7, "n02") == "train/n02/n02_7.JPEG"
    assert ImageNet.Split.VAL.get_image_relpath(4, "n02") == "val/n02/ILSVRC2012_val_00000004.JPEG"
    assert ImageNet.Split.TEST.get_image_relpath(9) == "test/ILSVRC2012_test_00000009.JPEG"
    assert ImageNet.Split.TRAIN.parse_image_relpath("train/n02/n02_12.JPEG") == ("n02", 12)
    assert ImageNet.Split.VAL.parse_image_relpath("val/n02/ILSVRC2012_val_00000004.JPEG") == ("n02", 4)
    assert (ImageNet.Split.TRAIN.length, ImageNet.Split.VAL.length, ImageNet.Split.TEST.length) == (
        1_281_167,
        50_000,
        100_000,
    )


def test_dump_extra_round_trip(imagenet_root: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    _dump_all(imagenet_root, extra)
    assert sorted(p.name for p in extra.iterdir()) == [
        "class-ids-TRAIN.npy",
        "class-ids-VAL.npy",
        "class-names-TRAIN.npy",
        "class-names-VAL.npy",
        "entries-TEST.npy",
        "entries-TRAIN.npy",
        "entries-VAL.npy",
    ]
    entries = np.load(extra / "entries-TRAIN.npy")
    assert entries.dtype.names == ("actual_index", "class_index", "class_id", "class_name")
    assert entries.dtype["actual_index"] == np.dtype("<u4") and entries.dtype["class_index"] == np.dtype("<u4")
    # class order: n01 before n02; files sorted by name inside a class
    assert entries["actual_index"].tolist() == [3, 12, 7]
    assert entries["class_index"].tolist() == [0, 1, 1]
    assert entries["class_name"].tolist() == ["tench", "goldfish", "goldfish"]

    train = ImageNet(split=ImageNet.Split.TRAIN, root=imagenet_root, extra=extra)
    assert len(train) == 3  # a subset is accepted
    assert train.get_targets().tolist() == [0, 1, 1]
    assert train.get_class_id(1) == "n02" and train.get_class_name(0) == "tench"
    assert train.find_class_id(2) == "n03" and train.find_class_name(2) == "great white shark"
    assert train.get_image_data(2) == (imagenet_root / "train" / "n02" / "n02_7.JPEG").read_bytes()
    image, target = train[0]
    assert image.mode == "RGB" and target == 0

    val = ImageNet(split=ImageNet.Split.VAL, root=imagenet_root, extra=extra)
    assert len(val) == 1 and val[0][1] == 1  # class indices agree across splits although val lacks n01

    test = ImageNet(split=ImageNet.Split.TEST, root=imagenet_root, extra=extra)
    assert len(test) == 2 and test.get_targets() is None
    assert test.get_image_data(0) == (imagenet_root / "test" / "ILSVRC2012_test_00000002.JPEG").read_bytes()
    assert test[1][1] is None and test.get_class_id(0) is None


def test_full_split_length_only_when_asked(imagenet_root: Path, tmp_path: Path) -> None:
    _dump_all(imagenet_root, tmp_path / "extra")
    dataset = ImageNet(split=ImageNet.Split.TRAIN, root=imagenet_root, extra=tmp_path / "extra", check_length=True)
    with pytest.raises(RuntimeError, match="1281167"):
        len(dataset)


def test_missing_extra_tells_how_to_make_it(imagenet_root: Path, tmp_path: Path) -> None:
    dataset = ImageNet(split=ImageNet.Split.VAL, root=imagenet_root, extra=tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="dump_extra"):
        len(dataset)


def test_missing_labels_or_unlisted_class(imagenet_root: Path, tmp_path: Path) -> None:
    (imagenet_root / "labels.txt").write_text("n01,tench\n")
    with pytest.raises(ValueError, match="n02"):
        ImageNet(split=ImageNet.Split.TRAIN, root=imagenet_root, extra=tmp_path / "e").dump_extra()
    (imagenet_root / "labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match="labels.txt"):
        ImageNet(split=ImageNet.Split.TRAIN, root=imagenet_root, extra=tmp_path / "e").dump_extra()


def test_dataset_string(imagenet_root: Path, tmp_path: Path) -> None:
    _dump_all(imagenet_root, tmp_path / "extra")
    dataset = make_dataset(dataset_str=f"ImageNet:split=VAL:root={imagenet_root}:extra={tmp_path / 'extra'}")
    assert isinstance(dataset, ImageNet) and dataset.split == ImageNet.Split.VAL and len(dataset) == 1
