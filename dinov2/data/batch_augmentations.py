"""The colour half of the DINOv2 multi-crop augmentation, applied to whole batches of crops.

Per image, torchvision's colour jitter, grayscale, blur and solarisation cost about 4 ms for the 6 crops of a
28 px image on one CPU core, nearly all of it per-call overhead; on a 2-core machine the data worker then takes a
core from training. Applied to the stacked crops of a batch, the same draws cost a few tensor operations per batch.
The distributions are those of :class:`dinov2.data.DataAugmentationDINO` (each image gets its own factors, its own
order of the four jitter operations and its own coin flips); the difference is that the maths runs in float
without the uint8 rounding of PIL between operations, and the random draws come in another order.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .transforms import (
    BLUR_KERNEL_SIZE,
    BLUR_SIGMA,
    COLOR_JITTER,
    COLOR_JITTER_P,
    GRAYSCALE_P,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    SOLARIZE_P,
    SOLARIZE_THRESHOLD,
)

__all__ = ["BatchColorAugmentation", "adjust_hue", "gaussian_blur"]


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` -> ``[N, 1, H, W]`` luma with torchvision's (ITU-R 601) weights."""
    red, green, blue = images.unbind(dim=1)
    return (0.2989 * red + 0.587 * green + 0.114 * blue).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (_per_sample(factor) * images + (1 - _per_sample(factor)) * other).clamp(0, 1)


def _brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (images * _per_sample(factor)).clamp(0, 1)


def _contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, _grayscale(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def _saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, _grayscale(images), factor)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotates the hue of each image ``[N, 3, H, W]`` (in [0, 1]) by ``shift[n]`` turns, through HSV."""
    value, _ = images.max(dim=1)
    chroma = value - images.min(dim=1).values
    grey = chroma == 0
    safe_chroma = torch.where(grey, torch.ones_like(chroma), chroma)
    red, green, blue = images.unbind(dim=1)
    # Hue in sixths of a turn, from whichever channel is the maximum (red first on ties, as torchvision).
    hue = torch.where(
        value == red,
        (green - blue) / safe_chroma,
        torch.where(value == green, 2 + (blue - red) / safe_chroma, 4 + (red - green) / safe_chroma),
    )
    hue = torch.where(grey, torch.zeros_like(hue), hue)
    hue = torch.remainder(hue / 6 + shift.view(-1, 1, 1), 1.0)
    saturation = chroma / torch.where(value == 0, torch.ones_like(value), value)
    # Back to RGB: each channel k is v - v s max(0, min(m, 4 - m, 1)) with m = (k + 6 h) mod 6, k = 5, 3, 1.
    channels = []
    for offset in (5.0, 3.0, 1.0):
        m = torch.remainder(offset + hue * 6, 6.0)
        ramp = torch.minimum(torch.minimum(m, 4 - m), torch.ones_like(m)).clamp(min=0)
        channels.append(value - value * saturation * ramp)
    return torch.stack(channels, dim=1)


_JITTER_OPERATIONS = (_brightness, _contrast, _saturation, adjust_hue)


def _is_grey(images: torch.Tensor) -> torch.Tensor:
    """``[N]``: whether the three channels of each image are equal (a hue rotation then changes nothing)."""
    return (images.amax(dim=1) == images.amin(dim=1)).flatten(1).all(dim=1)


def _uniform(n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n)


def _color_jitter(images: torch.Tensor) -> torch.Tensor:
    """With probability COLOR_JITTER_P per image: brightness, contrast, saturation and hue, in an order per image.
    The hue rotation, the costliest operation, is skipped on grey images: for them it is the identity (exactly),
    and they stay grey through the other three."""
    n = images.shape[0]
    applied = torch.rand(n) < COLOR_JITTER_P
    brightness, contrast, saturation, hue = (COLOR_JITTER[k] for k in ("brightness", "contrast", "saturation", "hue"))
    factors = (
        _uniform(n, 1 - brightness, 1 + brightness),
        _uniform(n, 1 - contrast, 1 + contrast),
        _uniform(n, 1 - saturation, 1 + saturation),
        _uniform(n, -hue, hue),
    )
    order = torch.rand(n, len(_JITTER_OPERATIONS)).argsort(dim=1)  # [N, 4]: a random permutation per image
    rotated = applied & ~_is_grey(images)
    for step in range(len(_JITTER_OPERATIONS)):
        for index, operation in enumerate(_JITTER_OPERATIONS):
            chosen = (rotated if operation is adjust_hue else applied) & (order[:, step] == index)
            if chosen.any():
                images[chosen] = operation(images[chosen], factors[index][chosen])
    return images


def _random_grayscale(images: torch.Tensor) -> torch.Tensor:
    chosen = torch.rand(images.shape[0]) < GRAYSCALE_P
    return torch.where(_per_sample(chosen), _grayscale(images).expand_as(images), images)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blurs each image ``[N, C, H, W]`` with a separable Gaussian of ``BLUR_KERNEL_SIZE`` taps and std ``sigma[n]``
    (reflect padding), as torchvision's ``gaussian_blur`` does per image."""
    n, c, h, w = images.shape
    taps = torch.arange(BLUR_KERNEL_SIZE, dtype=images.dtype) - BLUR_KERNEL_SIZE // 2
    kernel = torch.exp(-(taps**2) / (2 * sigma.to(images.dtype).view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N*C, BLUR_KERNEL_SIZE]
    pad = BLUR_KERNEL_SIZE // 2
    planes = F.pad(images.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    planes = F.conv2d(planes, kernel.view(n * c, 1, 1, BLUR_KERNEL_SIZE), groups=n * c)
    planes = F.conv2d(planes, kernel.view(n * c, 1, BLUR_KERNEL_SIZE, 1), groups=n * c)
    return planes.view(n, c, h, w)


def _random_blur(images: torch.Tensor, p: float) -> torch.Tensor:
    n = images.shape[0]
    chosen = torch.rand(n) < p
    sigma = _uniform(n, *BLUR_SIGMA)
    if chosen.any():
        images[chosen] = gaussian_blur(images[chosen], sigma[chosen])
    return images


def _random_solarize(images: torch.Tensor) -> torch.Tensor:
    chosen = _per_sample(torch.rand(images.shape[0]) < SOLARIZE_P)
    return torch.where(chosen & (images >= SOLARIZE_THRESHOLD / 255), 1 - images, images)


class BatchColorAugmentation:
    """Colour jitter, grayscale, blur, solarisation and normalisation of the stacked uint8 crops of a batch.

    ``blur_probabilities``: (global crop 1, global crop 2, local crops), as in ``DataAugmentationDINO``. Call with
    the global crops ``[2B, 3, G, G]`` (first crops of all images, then second crops) and the local crops
    ``[n*B, 3, L, L]``; returns both as normalised float32. The draws use torch's global generator, which the
    training loader seeds per batch (``dinov2.data.ssl_loader``), so a resumed run redraws the same colours.
    """

    def __init__(self, blur_probabilities: Sequence[float]) -> None:
        self.blur_probabilities = tuple(float(p) for p in blur_probabilities)
        self.mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)

    def _colors(self, crops: torch.Tensor, blur_p: float, *, solarize: bool = False) -> torch.Tensor:
        images = crops.to(torch.float32) / 255
        if images.shape[0] == 0:
            return images
        images = _random_blur(_random_grayscale(_color_jitter(images)), blur_p)
        if solarize:
            images = _random_solarize(images)
        return (images - self.mean) / self.std

    def __call__(self, global_crops: torch.Tensor, local_crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        blur_1, blur_2, blur_local = self.blur_probabilities
        first, second = global_crops.chunk(2)
        global_out = torch.cat([self._colors(first, blur_1), self._colors(second, blur_2, solarize=True)])
        return global_out, self._colors(local_crops, blur_local)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(blur_probabilities={self.blur_probabilities})"
