import io
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinov2.data.datasets import ImageFolder
from dinov2.data.datasets.decoders import ImageDataDecoder, to_rgb
from dinov2.errors import DataError


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_grayscale_becomes_rgb_with_equal_channels() -> None:
    gray = Image.fromarray(np.full((5, 7), 77, dtype=np.uint8))  # [H, W] mode L
    out = ImageDataDecoder(_encode(gray, "PNG")).decode()
    assert out.mode == "RGB" and out.size == (7, 5)
    assert np.array_equal(np.asarray(out), np.full((5, 7, 3), 77, dtype=np.uint8))


def test_rgba_is_composited_on_white() -> None:
    pixels = np.zeros((3, 4, 4), dtype=np.uint8)  # [H, W, RGBA]
    pixels[..., :3] = (200, 0, 0)  # red hidden in transparent pixels, as drawing tools leave it
    pixels[0, 0] = (10, 20, 30, 255)  # one opaque pixel
    pixels[0, 1] = (10, 20, 30, 40)  # one mostly transparent pixel
    out = ImageDataDecoder(_encode(Image.fromarray(pixels, "RGBA"), "PNG")).decode()
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (10, 20, 30)
    assert out.getpixel((3, 2)) == (255, 255, 255)  # transparent: the background, not the hidden red
    blended = out.getpixel((1, 0))
    expected = [round(c * 40 / 255 + 255 * (1 - 40 / 255)) for c in (10, 20, 30)]
    assert all(abs(v - e) <= 1 for v, e in zip(blended, expected))


def test_gray_with_alpha_is_composited_too() -> None:
    la = Image.fromarray(np.stack([np.full((2, 2), 50, np.uint8), np.zeros((2, 2), np.uint8)], -1), "LA")
    assert ImageDataDecoder(_encode(la, "PNG")).decode().getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency() -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50])
    data = _encode(palette, "PNG", transparency=0)  # palette entry 0 is transparent
    assert Image.open(io.BytesIO(data)).mode == "P"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL warns when such images are converted to RGB directly
        out = ImageDataDecoder(data).decode()
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (200, 100, 50)


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (6, 6), (0, 0, 0, 0))  # no ink: white
    data = _encode(cmyk, "JPEG", quality=100)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = ImageDataDecoder(data).decode()
    assert out.mode == "RGB" and all(v >= 250 for v in out.getpixel((3, 3)))


def test_16_bit_grayscale_is_rescaled_not_clipped() -> None:
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)  # [1, 4]
    out = ImageDataDecoder(_encode(Image.fromarray(values), "PNG")).decode()
    assert out.mode == "RGB"
    assert np.asarray(out)[0, :, 0].tolist() == [0, 1000 // 257, 32896 // 257, 255]


def test_rgb_passes_through() -> None:
    image = Image.new("RGB", (3, 3), (1, 2, 3))
    assert to_rgb(image).getpixel((0, 0)) == (1, 2, 3)


@pytest.fixture
def folder_with_bad_files(tmp_path: Path, write_image, jpeg_bytes) -> Path:
    write_image(tmp_path / "0_good.jpg", color=0)
    (tmp_path / "1_truncated.jpg").write_bytes(jpeg_bytes(color=1, size=(64, 48))[:300])
    (tmp_path / "2_text.jpg").write_text("this is not a JPEG")
    write_image(tmp_path / "3_good.jpg", color=3)
    return tmp_path


def test_unreadable_files_are_replaced_logged_once_and_counted(
    folder_with_bad_files: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = ImageFolder(root=folder_with_bad_files)
    good = np.asarray(dataset[3][0])
    with caplog.at_level(logging.WARNING, logger="dinov2"):
        for _ in range(3):
            for index in (1, 2):
                image, target = dataset[index]
                assert np.array_equal(np.asarray(image), good)  # deterministic replacement: the next good sample
    assert dataset.num_unreadable == 2
    messages = [r.getMessage() for r in caplog.records if "skipping unreadable" in r.getMessage()]
    assert len(messages) == 2  # once per bad file, not once per access
    assert "1_truncated.jpg" in messages[0] and "2_text.jpg" in messages[1]
    assert "2 unreadable sample(s)" in messages[1]


def test_strict_mode_raises_with_the_path(folder_with_bad_files: Path) -> None:
    dataset = ImageFolder(root=folder_with_bad_files, strict=True)
    dataset[0]
    with pytest.raises(RuntimeError, match="1_truncated.jpg"):
        dataset[1]
    with pytest.raises(RuntimeError, match="2_text.jpg"):
        dataset[2]


def test_a_dataset_of_only_bad_files_fails_loudly(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"^all 3 samples are unreadable \(.*0\.png, \.\.\.\); check the dataset root"):
        ImageFolder(root=tmp_path)[0]
