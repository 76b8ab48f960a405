"""Turn stored bytes into the PIL RGB images and targets the transforms expect."""

from abc import ABC, abstractmethod
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["Decoder", "ImageDataDecoder", "TargetDecoder", "to_rgb"]


class Decoder(ABC):
    @abstractmethod
    def decode(self) -> Any:
        """Returns the decoded object."""


# Transparent pixels are shown on this background (as an image viewer on a white page shows them).
BACKGROUND = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any PIL mode to 8-bit RGB, fully decoding the image (so truncated files fail here, not later).

    Images with transparency (RGBA, LA, PA, palette or RGB/L with a transparent colour) are composited onto a
    white background: dropping the alpha channel would expose whatever colours the transparent pixels happen to
    store (often garbage left by the drawing tool). 16/32-bit grayscale is rescaled to 8 bits instead of being
    clipped at 255, which would turn most 16-bit images white.
    """
    if image.mode == "RGB" and "transparency" not in image.info:
        image.load()
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.int64)  # [H, W]
        image = Image.fromarray((np.clip(values, 0, 65535) // 257).astype(np.uint8))  # mode L
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class ImageDataDecoder(Decoder):
    """Decodes encoded image bytes (JPEG, PNG, ...) into a PIL RGB image."""

    def __init__(self, image_data: bytes) -> None:
        self._image_data = image_data

    def decode(self) -> Image.Image:
        return to_rgb(Image.open(BytesIO(self._image_data)))


class TargetDecoder(Decoder):
    """Passes targets through unchanged."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def decode(self) -> Any:
        return self._target
