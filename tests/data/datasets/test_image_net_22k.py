import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dinov2.data import make_dataset
from dinov2.data.datasets import ImageNet22k


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def in22k_root(tmp_path: Path, jpeg_bytes) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "in22k"
    root.mkdir()
    images = {}
    long_name = "n0002_" + "x" * 120 + ".JPEG"  # > 100 characters: needs an extra tar header
    with tarfile.open(root / "n0002.tar", "w", format=tarfile.GNU_FORMAT) as archive:
        for name, color in (("n0002_1.JPEG", 1), (long_name, 2)):
            images[name] = jpeg_bytes(color=color)
            _add(archive, name, images[name])
        images["n0002_3.JPEG"] = jpeg_bytes(color=3)
        _add(archive, "n0002_3.JPEG", gzip.compress(images["n0002_3.JPEG"]))  # stored gzipped
    with tarfile.open(root / "n0001.tar", "w") as archive:
        images["n0001_5.JPEG"] = jpeg_bytes(color=5)
        _add(archive, "n0001_5.JPEG", images["n0001_5.JPEG"])
    return root, images


def test_dump_extra_and_read_back(in22k_root, tmp_path: Path) -> None:
    root, images = in22k_root
    extra = tmp_path / "extra"
    ImageNet22k(root=root, extra=extra).dump_extra()
    entries = np.load(extra / "entries.npy")
    assert entries.dtype.names == ("class_index", "class_id", "start_offset", "end_offset", "filename")
    assert entries.dtype["start_offset"] == np.dtype("<u8")  # the reference's uint32 overflows past 4 GiB
    assert np.load(extra / "class-ids.npy").tolist() == ["n0001", "n0002"]

    dataset = ImageNet22k(root=root, extra=extra)
    assert len(dataset) == 4
    assert dataset.get_targets().tolist() == [0, 1, 1, 1]
    assert dataset.find_class_id(1) == "n0002" and dataset.get_class_id(0) == "n0001"
    for i in range(4):
        assert dataset.get_image_data(i) == images[str(entries[i]["filename"])], entries[i]["filename"]
    image, target = dataset[3]
    assert image.mode == "RGB" and target == 1

    clone = pickle.loads(pickle.dumps(dataset))  # as a spawned DataLoader worker receives it
    assert clone.get_image_data(2) == dataset.get_image_data(2)


def test_few_open_maps(in22k_root, tmp_path: Path) -> None:
    root, _ = in22k_root
    dataset = ImageNet22k(root=root, extra=tmp_path / "extra", mmap_cache_size=1)
    dataset.dump_extra()
    for i in range(4):
        dataset.get_image_data(i)
        assert len(dataset._mmaps) == 1


def test_dataset_string_and_missing_extra(in22k_root, tmp_path: Path) -> None:
    root, _ = in22k_root
    with pytest.raises(FileNotFoundError, match="dump_extra"):
        len(make_dataset(dataset_str=f"ImageNet22k:root={root}:extra={tmp_path / 'none'}"))
    ImageNet22k(root=root, extra=tmp_path / "extra").dump_extra()
    assert len(make_dataset(dataset_str=f"ImageNet22k:root={root}:extra={tmp_path / 'extra'}")) == 4
