"""Fixtures that write small image files for the data tests."""

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _pixels(color: int, size: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(color).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)  # [H, W, 3]


def _write_image(
    path: Path, *, size: tuple[int, int] = (12, 9), color: int = 0, mode: str = "RGB", fmt: str = "JPEG"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(_pixels(color, size))
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt)
    return path


def _jpeg_bytes(color: int = 0, size: tuple[int, int] = (12, 9)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_pixels(color, size)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """``write_image(path, size=, color=, mode=, fmt=)``: a small image whose pixels depend on ``color``."""
    return _write_image


@pytest.fixture
def jpeg_bytes() -> Callable[..., bytes]:
    return _jpeg_bytes


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """ImageFolder caches its scans; keep them out of the user's home directory."""
    monkeypatch.setenv("DINOV2_CACHE_DIR", str(tmp_path_factory.mktemp("dinov2_cache")))
