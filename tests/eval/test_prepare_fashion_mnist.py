import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def fm(load_script):
    return load_script("prepare_fashion_mnist")


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """idx by hand: bytes 0, 0, type 0x08 (uint8), ndim; then big-endian uint32 dims; then the data."""
    payload = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _fake_source(tmp_path: Path, gz: bool) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    source = tmp_path / "src"
    source.mkdir()
    data = {}
    for split, n in (("train", 12), ("t10k", 5)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 3).astype(np.uint8) if split == "train" else np.array([9, 0, 1, 9, 2], np.uint8)
        _write_idx(source / f"{split}-images-idx3-ubyte", images, gz)
        _write_idx(source / f"{split}-labels-idx1-ubyte", labels, gz)
        data[split] = (images, labels)
    return source, data


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(fm, tmp_path, gz):
    source, data = _fake_source(tmp_path, gz)
    suffix = ".gz" if gz else ""
    images = fm.read_idx(source / f"train-images-idx3-ubyte{suffix}")
    labels = fm.read_idx(source / f"train-labels-idx1-ubyte{suffix}")
    assert images.shape == (12, 28, 28) and labels.shape == (12,)
    np.testing.assert_array_equal(images, data["train"][0])
    np.testing.assert_array_equal(labels, data["train"][1])


def test_read_idx_rejects_bad_files(fm, tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(ValueError, match="not an idx file"):
        fm.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"abc")
    with pytest.raises(ValueError, match="5 bytes but 3 follow"):
        fm.read_idx(short)


def test_prepare_writes_class_folders_with_exact_pixels(fm, tmp_path):
    source, data = _fake_source(tmp_path, gz=True)
    out = tmp_path / "out"
    folders = fm.prepare(source, out)
    assert folders == {"train": out / "train", "val": out / "val"}

    train_files = sorted((out / "train").rglob("*.png"))
    assert len(train_files) == 12
    # Label of sample 4 is 4 % 3 = 1 -> class folder 1_trouser.
    png = out / "train" / "1_trouser" / "00004.png"
    np.testing.assert_array_equal(np.array(Image.open(png)), data["train"][0][4])
    assert (out / "val" / "9_ankle_boot" / "00003.png").is_file()  # the official test split
    assert len(list((out / "val").rglob("*.png"))) == 5
    # Class folders sort in label order, so ImageFolder indices equal the official labels.
    assert sorted(fm.CLASS_NAMES) == list(fm.CLASS_NAMES)

    # A second run finds the trees complete and does not rewrite them.
    png.unlink()
    fm.prepare(source, out)
    assert not png.exists()


def test_missing_source_names_the_fix(fm, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fm.load_split(tmp_path, "train")
