"""The colours drawn per batch match torchvision's per-image operations and the reference's probabilities."""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from dinov2.data import DataAugmentationDINO
from dinov2.data.batch_augmentations import BatchColorAugmentation, adjust_hue, gaussian_blur
from dinov2.data.collate import collate_data_and_cast
from dinov2.data.masking import MaskingGenerator
from dinov2.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from dinov2.utils.rng import seeded


def _images(n: int = 6, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("shift", [-0.1, -0.03, 0.0, 0.05, 0.1, 0.5])
def test_hue_matches_torchvision(shift: float) -> None:
    images = _images()
    images[0] = 0.5  # grey: no hue
    images[1, :, :4] = torch.tensor([0.2, 0.9, 0.9]).view(3, 1, 1)  # channel ties
    expected = torch.stack([TF.adjust_hue(image, shift) for image in images])
    torch.testing.assert_close(adjust_hue(images, torch.full((6,), shift)), expected, atol=1e-5, rtol=0)


def test_hue_shifts_each_image_by_its_own_amount() -> None:
    images, shifts = _images(), torch.linspace(-0.1, 0.1, 6)
    expected = torch.stack([TF.adjust_hue(image, float(shift)) for image, shift in zip(images, shifts)])
    torch.testing.assert_close(adjust_hue(images, shifts), expected, atol=1e-5, rtol=0)


def test_hue_leaves_grey_images_exactly_unchanged() -> None:
    """What lets the colour jitter skip the hue rotation of grey images (Fashion-MNIST: all of them)."""
    grey = _images(n=16).mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    assert torch.equal(adjust_hue(grey, torch.linspace(-0.5, 0.5, 16)), grey)


def test_grey_images_stay_grey_through_the_jitter() -> None:
    from dinov2.data.batch_augmentations import _color_jitter, _is_grey

    grey = _images(n=64).mean(dim=1, keepdim=True).expand(-1, 3, -1, -1).contiguous()
    assert _is_grey(grey).all() and not _is_grey(_images()).any()
    torch.manual_seed(0)
    jittered = _color_jitter(grey.clone())
    assert _is_grey(jittered).all() and not torch.equal(jittered, grey)


def test_the_jitter_rotates_the_hue_of_colourful_images_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the hue the only jitter (brightness, contrast, saturation factors 1): colourful images change, grey ones
    come out exactly as they went in."""
    from dinov2.data import batch_augmentations

    monkeypatch.setattr(batch_augmentations, "COLOR_JITTER_P", 1.0)
    monkeypatch.setattr(
        batch_augmentations, "COLOR_JITTER", {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.5}
    )
    grey = _images(n=16).mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    colourful = _images(n=16)
    torch.manual_seed(0)
    out = batch_augmentations._color_jitter(torch.cat([grey, colourful]))
    assert torch.equal(out[:16], grey)
    assert ((out[16:] - colourful).abs().amax(dim=(1, 2, 3)) > 1e-3).all()


def test_blur_matches_torchvision_per_image() -> None:
    images, sigmas = _images(size=14), torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.7])
    expected = torch.stack(
        [TF.gaussian_blur(image, kernel_size=9, sigma=float(sigma)) for image, sigma in zip(images, sigmas)]
    )
    torch.testing.assert_close(gaussian_blur(images, sigmas), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("name", "reference"),
    [("_brightness", TF.adjust_brightness), ("_contrast", TF.adjust_contrast), ("_saturation", TF.adjust_saturation)],
)
def test_jitter_operations_match_torchvision(name: str, reference) -> None:  # noqa: ANN001
    from dinov2.data import batch_augmentations

    images, factors = _images(), torch.tensor([0.6, 0.8, 1.0, 1.2, 1.4, 0.9])
    expected = torch.stack([reference(image, float(f)) for image, f in zip(images, factors)])
    torch.testing.assert_close(getattr(batch_augmentations, name)(images, factors), expected, atol=1e-5, rtol=0)


def _uint8_crops(n: int, size: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def _unnormalize(images: torch.Tensor) -> torch.Tensor:
    return images * torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_DEFAULT_MEAN).view(
        1, 3, 1, 1
    )


def test_probabilities_of_the_colour_operations() -> None:
    """Jitter 0.8 (or grayscale 0.2), blur as configured, solarisation 0.2 on the second global crops only."""
    n = 4000
    crops = _uint8_crops(2 * n, 8)
    torch.manual_seed(0)
    out_global, out_local = BatchColorAugmentation((0.0, 1.0, 0.5))(crops, crops[:0])
    assert out_global.dtype == torch.float32 and out_global.shape == crops.shape and out_local.shape == (0, 3, 8, 8)
    restored = _unnormalize(out_global)
    changed = (restored - crops.float() / 255).abs().amax(dim=(1, 2, 3)) > 1e-4
    first, second = changed.chunk(2)
    # Crop 1: no blur, so unchanged exactly when neither jitter (0.8) nor grayscale (0.2) applies: 0.2 * 0.8.
    assert abs((~first).float().mean().item() - 0.16) < 0.03
    assert second.float().mean().item() > 0.97  # blur probability 1.0 (a sigma near 0.1 changes almost nothing)


def test_only_the_second_global_crops_are_solarised_with_probability_0_2() -> None:
    """White crops stay at or above 0.6 through the jitter (brightness >= 0.6); solarised they fall to 0.4 or less."""
    n = 4000
    white = torch.full((2 * n, 3, 8, 8), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    out_global, _ = BatchColorAugmentation((0.0, 0.0, 0.0))(white, white[:0])
    dark = (_unnormalize(out_global).amax(dim=(1, 2, 3)) < 0.5).chunk(2)
    assert not dark[0].any()
    assert abs(dark[1].float().mean().item() - 0.2) < 0.03


def test_the_batch_transform_is_seeded_by_the_global_generator() -> None:
    crops = _uint8_crops(8, 12)
    transform = BatchColorAugmentation((0.5, 0.5, 0.5))
    with seeded(3, 7):
        first = transform(crops, crops)
    with seeded(3, 7):
        again = transform(crops, crops)
    with seeded(3, 8):
        other = transform(crops, crops)
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert not torch.equal(first[0], other[0])


def test_color_on_batch_crops_in_the_workers_and_colours_in_the_collate() -> None:
    aug = DataAugmentationDINO((0.4, 1.0), (0.1, 0.4), 2, 16, 8, color_on_batch=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    sample = aug(image)
    assert [c.dtype for c in sample["global_crops"] + sample["local_crops"]] == [torch.uint8] * 4
    assert sample["global_crops"][0].shape == (3, 16, 16) and sample["local_crops"][0].shape == (3, 8, 8)
    batch = collate_data_and_cast(
        [(aug(image), None) for _ in range(4)],
        mask_ratio_tuple=(0.1, 0.5),
        mask_probability=0.5,
        dtype=torch.float32,
        mask_generator=MaskingGenerator(input_size=(4, 4), max_num_patches=8),
        batch_transform=aug.batch_transform,
    )
    assert batch["collated_global_crops"].shape == (8, 3, 16, 16)
    assert batch["collated_local_crops"].shape == (8, 3, 8, 8)
    assert batch["collated_global_crops"].dtype == torch.float32
    assert batch["collated_global_crops"].min() < -1 and batch["collated_global_crops"].max() > 1  # normalised
    assert DataAugmentationDINO((0.4, 1.0), (0.1, 0.4), 2).batch_transform is None
