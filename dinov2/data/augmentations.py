"""Multi-crop augmentation of DINOv2 pretraining (two global crops and ``local_crops_number`` local crops)."""

import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from dinov2.logging import FILE_ONLY

from .batch_augmentations import BatchColorAugmentation
from .transforms import (
    COLOR_JITTER,
    COLOR_JITTER_P,
    GRAYSCALE_P,
    SOLARIZE_P,
    SOLARIZE_THRESHOLD,
    GaussianBlur,
    make_normalize_transform,
)

logger = logging.getLogger(__name__)

__all__ = ["DataAugmentationDINO"]

# The official DINOv2 code passes 1 - p to RandomApply, so its configured (1.0, 0.1, 0.5) become these effective
# values; they are the defaults because the released checkpoints were trained with them (see README).
REFERENCE_GLOBAL_CROPS_1_BLUR_P = 0.0
REFERENCE_GLOBAL_CROPS_2_BLUR_P = 0.9
REFERENCE_LOCAL_CROPS_BLUR_P = 0.5


def _check_scale(name: str, scale: Sequence[float]) -> tuple[float, float]:
    scale = tuple(float(s) for s in scale)
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"{name}={scale} must be two numbers with 0 < min <= max <= 1, e.g. (0.32, 1.0)")
    return scale


def _check_counts(local_crops_number: int, global_crops_size: int, local_crops_size: int) -> None:
    if int(local_crops_number) != local_crops_number or local_crops_number < 0:
        raise ValueError(f"local_crops_number={local_crops_number} must be a non-negative integer")
    for name, size in (("global_crops_size", global_crops_size), ("local_crops_size", local_crops_size)):
        if int(size) != size or size <= 0:
            raise ValueError(f"{name}={size} must be a positive integer number of pixels")


_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # aspect ratios of RandomResizedCrop's default
_CROP_ATTEMPTS = 10


class _RandomResizedCropAndFlip:
    """torchvision's ``RandomResizedCrop(size, scale, bicubic)`` then ``RandomHorizontalFlip(0.5)`` on a PIL image:
    the same random draws and the same pixels, in two PIL calls. On crops of a few dozen pixels the transforms'
    own overhead is most of the cost (84 against 58 us per crop measured, 6 crops per image)."""

    def __init__(self, size: int, scale: tuple[float, float]) -> None:
        self.size, self.scale = size, scale

    def __call__(self, image: Image.Image) -> Image.Image:
        top, left, height, width = transforms.RandomResizedCrop.get_params(image, self.scale, _CROP_RATIO)
        crop = image.crop((left, top, left + width, top + height))
        crop = crop.resize((self.size, self.size), Image.Resampling.BICUBIC)
        if torch.rand(1) < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return crop


def _random_boxes(n: int, height: int, width: int, scale: tuple[float, float]) -> np.ndarray:
    """``[n, 4]`` boxes ``(x0, y0, x1, y1)`` drawn as ``RandomResizedCrop`` draws them (area fraction uniform in
    ``scale``, log aspect ratio uniform in 3/4..4/3, the first of 10 attempts that fits, else the whole image
    clamped to those ratios), in continuous pixel coordinates, from numpy's global RNG (seeded per sample by the
    loader): numpy draws all of an image's boxes in a few microseconds where torch takes ~25 us per crop."""
    area = np.random.uniform(*scale, size=(n, _CROP_ATTEMPTS)) * (height * width)
    ratio = np.exp(np.random.uniform(*np.log(_CROP_RATIO), size=(n, _CROP_ATTEMPTS)))
    w, h = np.sqrt(area * ratio), np.sqrt(area / ratio)
    fits = (w <= width) & (h <= height)
    first = fits.argmax(axis=1)  # 0 when none fits
    w, h = w[np.arange(n), first], h[np.arange(n), first]
    fallback = ~fits.any(axis=1)
    w[fallback] = min(width, height * _CROP_RATIO[1])
    h[fallback] = min(height, width / _CROP_RATIO[0])
    x0, y0 = np.random.uniform(size=n) * (width - w), np.random.uniform(size=n) * (height - h)
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


def _resized_crops(image: Image.Image, n: int, size: int, scale: tuple[float, float]) -> list[torch.Tensor]:
    """``n`` random-resized crops of ``image`` (RGB) to ``size`` x ``size``, bicubic, each flipped horizontally with
    probability 1/2, as uint8 ``[3, size, size]`` tensors. The draws of all ``n`` come at once and each crop is one
    PIL call (``resize`` with a sub-pixel ``box``): 220 against 540 us for the 6 crops of a 28 px image."""
    if n == 0:
        return []
    boxes = _random_boxes(n, image.height, image.width, scale)
    flips = np.random.uniform(size=n) < 0.5
    crops = []
    for box, flip in zip(boxes.tolist(), flips.tolist()):
        crop = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
        crop = np.array(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else crop)  # [size, size, 3]
        crops.append(torch.from_numpy(crop).permute(2, 0, 1))  # a view; the collate stacks it into the batch
    return crops


class DataAugmentationDINO:
    """Turns one PIL image into the dict of crops the SSL meta-architecture consumes.

    Returns ``{"global_crops": [g1, g2], "global_crops_teacher": [g1, g2], "local_crops": [l_1..l_n],
    "offsets": ()}`` with tensors ``[3, G, G]`` and ``[3, L, L]``. The random draws happen in a fixed order
    (crop 1: geometry, colour, blur; crop 2: geometry, colour, blur, solarise; then each local crop), the order of
    the official DINOv2 code, so a torch seed gives the same crops as there with the default blur probabilities.

    The three blur probabilities are plain probabilities; their defaults 0.0 / 0.9 / 0.5 are the effective values
    of the released training runs (configured there as 1.0 / 0.1 / 0.5, inverted; see above).

    ``color_on_batch=True`` leaves the colours to :attr:`batch_transform` (a
    :class:`~dinov2.data.batch_augmentations.BatchColorAugmentation`, for the collate function): the crops come out
    as uint8 tensors, and the same colour distributions are drawn for a whole batch at once, which is much cheaper
    for small crops. Otherwise ``batch_transform`` is None. ``fast_crops=True`` (needs ``color_on_batch``) cuts
    the crops of an image with numpy's random draws and one PIL call each (:func:`_resized_crops`: same crop
    distribution and bicubic resampling, sub-pixel boxes, other random draws), 2.4x cheaper than torchvision's
    transforms; on a 2-core machine the data loading's time is taken from the training.
    """

    def __init__(
        self,
        global_crops_scale: Sequence[float],
        local_crops_scale: Sequence[float],
        local_crops_number: int,
        global_crops_size: int = 224,
        local_crops_size: int = 96,
        *,
        global_crops_1_blur_p: float = REFERENCE_GLOBAL_CROPS_1_BLUR_P,
        global_crops_2_blur_p: float = REFERENCE_GLOBAL_CROPS_2_BLUR_P,
        local_crops_blur_p: float = REFERENCE_LOCAL_CROPS_BLUR_P,
        color_on_batch: bool = False,
        fast_crops: bool = False,
    ) -> None:
        self.global_crops_scale = _check_scale("global_crops_scale", global_crops_scale)
        self.local_crops_scale = _check_scale("local_crops_scale", local_crops_scale)
        _check_counts(local_crops_number, global_crops_size, local_crops_size)
        self.local_crops_number = int(local_crops_number)
        self.global_crops_size = int(global_crops_size)
        self.local_crops_size = int(local_crops_size)
        blur_probabilities = (global_crops_1_blur_p, global_crops_2_blur_p, local_crops_blur_p)
        self.blur_probabilities = tuple(float(p) for p in blur_probabilities)

        if fast_crops and not color_on_batch:
            raise ValueError("fast_crops=True makes uint8 tensor crops: it needs color_on_batch=True")
        self.fast_crops = bool(fast_crops)
        self.batch_transform = BatchColorAugmentation(self.blur_probabilities) if color_on_batch else None

        self._log_parameters()
        if not self.fast_crops:  # the fast path cuts its crops in _resized_crops, its colours are the batch's
            self._build_pil_transforms(color_on_batch)

    def _build_pil_transforms(self, color_on_batch: bool) -> None:
        self.geometric_augmentation_global = _RandomResizedCropAndFlip(self.global_crops_size, self.global_crops_scale)
        self.geometric_augmentation_local = _RandomResizedCropAndFlip(self.local_crops_size, self.local_crops_scale)
        if color_on_batch:
            self.global_transfo1 = self.global_transfo2 = self.local_transfo = transforms.PILToTensor()
        else:
            self._build_color_transforms()

    def _build_color_transforms(self) -> None:
        color_jittering = transforms.Compose(
            [
                transforms.RandomApply([transforms.ColorJitter(**COLOR_JITTER)], p=COLOR_JITTER_P),
                transforms.RandomGrayscale(p=GRAYSCALE_P),
            ]
        )
        normalize = transforms.Compose([transforms.ToTensor(), make_normalize_transform()])
        blur_1, blur_2, blur_local = self.blur_probabilities
        self.global_transfo1 = transforms.Compose([color_jittering, GaussianBlur(p=blur_1), normalize])
        self.global_transfo2 = transforms.Compose(
            [
                color_jittering,
                GaussianBlur(p=blur_2),
                transforms.RandomSolarize(threshold=SOLARIZE_THRESHOLD, p=SOLARIZE_P),
                normalize,
            ]
        )
        self.local_transfo = transforms.Compose([color_jittering, GaussianBlur(p=blur_local), normalize])

    def _log_parameters(self) -> None:
        logger.info("###################################", extra=FILE_ONLY)
        logger.info("Using data augmentation parameters:", extra=FILE_ONLY)
        logger.info("global_crops_scale: %s", self.global_crops_scale, extra=FILE_ONLY)
        logger.info("local_crops_scale: %s", self.local_crops_scale, extra=FILE_ONLY)
        logger.info("local_crops_number: %s", self.local_crops_number, extra=FILE_ONLY)
        logger.info("global_crops_size: %s", self.global_crops_size, extra=FILE_ONLY)
        logger.info("local_crops_size: %s", self.local_crops_size, extra=FILE_ONLY)
        logger.info("blur probabilities (global 1, global 2, local): %s", self.blur_probabilities, extra=FILE_ONLY)
        logger.info("colours drawn per batch: %s", self.batch_transform is not None, extra=FILE_ONLY)
        logger.info("crops cut by numpy draws and one PIL call each: %s", self.fast_crops, extra=FILE_ONLY)
        logger.info("###################################", extra=FILE_ONLY)

    def __call__(self, image: Image.Image) -> dict[str, list[torch.Tensor] | tuple]:
        if self.fast_crops:
            global_crops = _resized_crops(image, 2, self.global_crops_size, self.global_crops_scale)
            local_crops = _resized_crops(image, self.local_crops_number, self.local_crops_size, self.local_crops_scale)
            return self._crops_dict(global_crops, local_crops)
        global_crop_1 = self.global_transfo1(self.geometric_augmentation_global(image))  # [3, G, G]
        global_crop_2 = self.global_transfo2(self.geometric_augmentation_global(image))  # [3, G, G]
        local_crops = [
            self.local_transfo(self.geometric_augmentation_local(image))  # [3, L, L]
            for _ in range(self.local_crops_number)
        ]
        return self._crops_dict([global_crop_1, global_crop_2], local_crops)

    @staticmethod
    def _crops_dict(global_crops: list[torch.Tensor], local_crops: list[torch.Tensor]) -> dict[str, list | tuple]:
        return {
            "global_crops": global_crops,
            "global_crops_teacher": global_crops,
            "local_crops": local_crops,
            "offsets": (),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(global_crops_scale={self.global_crops_scale}, "
            f"local_crops_scale={self.local_crops_scale}, local_crops_number={self.local_crops_number}, "
            f"global_crops_size={self.global_crops_size}, local_crops_size={self.local_crops_size}, "
            f"blur_p={self.blur_probabilities}, color_on_batch={self.batch_transform is not None}, "
            f"fast_crops={self.fast_crops})"
        )
