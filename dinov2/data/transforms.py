"""Image transforms shared by SSL pretraining and the classification evaluations."""

from collections.abc import Sequence

import torch
from torchvision import transforms

__all__ = [
    "GaussianBlur",
    "MaybeToTensor",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "make_normalize_transform",
    "make_classification_train_transform",
    "make_classification_eval_transform",
]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# DINOv2's photometric augmentation, shared by the per-image (DataAugmentationDINO) and per-batch
# (BatchColorAugmentation) pipelines: colour jitter with probability 0.8, grayscale 0.2, solarisation (pixels >= 128
# of 255 inverted) 0.2 on the second global crop, Gaussian blur with a 9-tap kernel and sigma drawn in [0.1, 2].
COLOR_JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}
COLOR_JITTER_P, GRAYSCALE_P, SOLARIZE_P, SOLARIZE_THRESHOLD = 0.8, 0.2, 0.2, 128
BLUR_KERNEL_SIZE, BLUR_SIGMA = 9, (0.1, 2.0)


class GaussianBlur(transforms.RandomApply):
    """Blurs with probability ``p`` using a 9x9 kernel and a sigma drawn uniformly in [radius_min, radius_max].

    ``p`` is the probability of blurring. ``DataAugmentationDINO`` passes the probabilities the released checkpoints
    were trained with, so the SSL pipeline is unchanged (see ``dinov2.data.augmentations`` and README).
    """

    def __init__(self, *, p: float = 0.5, radius_min: float = BLUR_SIGMA[0], radius_max: float = BLUR_SIGMA[1]) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"GaussianBlur probability p={p} must lie in [0, 1]")
        if not 0.0 < radius_min <= radius_max:
            raise ValueError(f"GaussianBlur needs 0 < radius_min <= radius_max, got ({radius_min}, {radius_max})")
        blur = transforms.GaussianBlur(kernel_size=BLUR_KERNEL_SIZE, sigma=(radius_min, radius_max))
        super().__init__(transforms=[blur], p=p)


class MaybeToTensor(transforms.ToTensor):
    """``ToTensor`` that lets tensors through unchanged, so transforms can be chained after tensor-producing ones."""

    def __call__(self, pic):  # noqa: ANN001 - PIL image, ndarray or tensor
        if isinstance(pic, torch.Tensor):
            return pic
        return super().__call__(pic)


def make_normalize_transform(
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD
) -> transforms.Normalize:
    """Channel normalisation with the ImageNet statistics the released backbones were trained with."""
    return transforms.Normalize(mean=mean, std=std)


def make_classification_train_transform(
    *,
    crop_size: int = 224,
    interpolation: transforms.InterpolationMode = transforms.InterpolationMode.BICUBIC,
    hflip_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> transforms.Compose:
    """Random-resized crop (scale 0.08-1), optional horizontal flip, tensor, normalise: the linear-probe recipe."""
    steps: list = [transforms.RandomResizedCrop(crop_size, interpolation=interpolation)]
    if hflip_prob > 0.0:
        steps.append(transforms.RandomHorizontalFlip(hflip_prob))
    steps += [MaybeToTensor(), make_normalize_transform(mean=mean, std=std)]
    return transforms.Compose(steps)


def make_classification_eval_transform(
    *,
    resize_size: int = 256,
    interpolation: transforms.InterpolationMode = transforms.InterpolationMode.BICUBIC,
    crop_size: int = 224,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> transforms.Compose:
    """Resize the shorter side to ``resize_size``, center-crop ``crop_size``, tensor, normalise (k-NN, linear)."""
    return transforms.Compose(
        [
            transforms.Resize(resize_size, interpolation=interpolation),
            transforms.CenterCrop(crop_size),
            MaybeToTensor(),
            make_normalize_transform(mean=mean, std=std),
        ]
    )
