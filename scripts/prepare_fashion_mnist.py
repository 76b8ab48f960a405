"""Converts the Fashion-MNIST idx files into class-folder image trees readable as ``ImageFolder:root=...``.

Source: the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or any folder holding
``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]`` and
``t10k-labels-idx1-ubyte[.gz]``. Output: ``OUT/train/<class>/<index>.png`` and ``OUT/val/<class>/<index>.png`` (the
official test split; grayscale PNG, 28x28): the layout ``scripts/main_job.py --dataset-dir`` reads. A finished tree
is marked by ``OUT/<split>/.complete`` and is not written again.

    python scripts/prepare_fashion_mnist.py --output data/fashion_mnist
"""

import argparse
import gzip
import logging
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger("dinov2")

DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
# Folder names sort in label order, so ImageFolder assigns each class its official index.
CLASS_NAMES = (
    "0_tshirt_top",
    "1_trouser",
    "2_pullover",
    "3_dress",
    "4_coat",
    "5_sandal",
    "6_shirt",
    "7_sneaker",
    "8_bag",
    "9_ankle_boot",
)
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_COMPLETE = ".complete"


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an idx file (optionally gzipped): magic ``0 0 <type> <ndim>``, big-endian uint32 dims, then data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic {data[:4]!r})")
    if data[2] != 0x08:
        raise ValueError(f"{path}: only uint8 idx data (type 0x08) is supported, got type {data[2]:#04x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims)) if dims else 1
    if len(data) - header != expected:
        raise ValueError(f"{path}: header says {dims} = {expected} bytes but {len(data) - header} follow")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(source: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (source / name).is_file():
            return source / name
    raise FileNotFoundError(
        f"{stem}[.gz] not found in {source}; install it with `apt-get install -y dataset-fashion-mnist` "
        "or pass --source pointing to the folder with the four idx files"
    )


def load_split(source: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` uint8 and labels ``[N]`` of ``split`` ("train" or "test")."""
    if split not in SPLIT_FILES:
        raise ValueError(f"split={split!r}; expected one of {sorted(SPLIT_FILES)}")
    images_stem, labels_stem = SPLIT_FILES[split]
    images = read_idx(_find(Path(source), images_stem))
    labels = read_idx(_find(Path(source), labels_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{split}: images {images.shape} and labels {labels.shape} do not pair up")
    if labels.max(initial=0) >= len(CLASS_NAMES):
        raise ValueError(f"{split}: label {labels.max()} out of range for {len(CLASS_NAMES)} classes")
    return images, labels


def write_image_folder(images: np.ndarray, labels: np.ndarray, out_dir: str | Path) -> int:
    """Writes ``out_dir/<class>/<index>.png`` (index = position in the split); returns the number written.
    Skips the work if ``out_dir`` is already complete."""
    out_dir = Path(out_dir)
    if (out_dir / _COMPLETE).is_file():
        return int((out_dir / _COMPLETE).read_text().strip() or 0)
    for name in CLASS_NAMES:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(out_dir / CLASS_NAMES[label] / f"{index:05d}.png")
        if (index + 1) % 10000 == 0:
            logger.info("%s: %d images written", out_dir, index + 1)
    (out_dir / _COMPLETE).write_text(f"{len(images)}\n")
    return len(images)


def prepare(source: str | Path, output: str | Path) -> dict[str, Path]:
    """Writes the train and val (the official test split) trees; returns ``{"train": folder, "val": folder}``."""
    output = Path(output)
    folders = {}
    for split, folder in (("train", "train"), ("test", "val")):
        images, labels = load_split(source, split)
        folders[folder] = output / folder
        count = write_image_folder(images, labels, folders[folder])
        logger.info("%s: %d images in %s", split, count, folders[folder])
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="Folder with the four idx files")
    parser.add_argument("--output", required=True, help="Output root for train/ and val/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    folders = prepare(args.source, args.output)
    for name, folder in folders.items():
        print(f"{name}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
