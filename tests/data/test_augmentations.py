import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from dinov2.data import DataAugmentationDINO
from dinov2.data.augmentations import _random_boxes, _resized_crops
from dinov2.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, GaussianBlur
from dinov2.utils.rng import seeded


def _image(width: int = 100, height: int = 75) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _reference_recipe(global_size: int, local_size: int, n_local: int):
    """The reference pipeline written from the spec (section 8.6), including its inverted blur probability."""
    bicubic = transforms.InterpolationMode.BICUBIC

    def reference_blur(p: float) -> transforms.RandomApply:  # applies the blur with probability 1 - p
        return transforms.RandomApply([transforms.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=1 - p)

    def geometric(size: int, scale: tuple[float, float]) -> transforms.Compose:
        return transforms.Compose(
            [transforms.RandomResizedCrop(size, scale=scale, interpolation=bicubic), transforms.RandomHorizontalFlip()]
        )

    colour = transforms.Compose(
        [
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
        ]
    )
    normalize = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    global1 = transforms.Compose([colour, reference_blur(1.0), normalize])
    global2 = transforms.Compose(
        [colour, reference_blur(0.1), transforms.RandomSolarize(threshold=128, p=0.2), normalize]
    )
    local = transforms.Compose([colour, reference_blur(0.5), normalize])

    def run(image: Image.Image) -> list[torch.Tensor]:
        crops = [
            global1(geometric(global_size, (0.32, 1.0))(image)),
            global2(geometric(global_size, (0.32, 1.0))(image)),
        ]
        crops += [local(geometric(local_size, (0.05, 0.32))(image)) for _ in range(n_local)]
        return crops

    return run


def test_crop_counts_and_sizes() -> None:
    aug = DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), 3, global_crops_size=32, local_crops_size=14)
    out = aug(_image())
    assert set(out) == {"global_crops", "global_crops_teacher", "local_crops", "offsets"}
    assert [tuple(c.shape) for c in out["global_crops"]] == [(3, 32, 32)] * 2
    assert [tuple(c.shape) for c in out["local_crops"]] == [(3, 14, 14)] * 3
    assert out["global_crops_teacher"] is out["global_crops"]
    assert out["offsets"] == ()
    assert all(c.dtype == torch.float32 for c in out["global_crops"] + out["local_crops"])


def test_default_blur_probabilities_are_the_reference_effective_ones() -> None:
    aug = DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), 2)
    assert aug.blur_probabilities == (0.0, 0.9, 0.5)
    blurs = [
        next(t for t in pipe.transforms if isinstance(t, GaussianBlur))
        for pipe in (aug.global_transfo1, aug.global_transfo2, aug.local_transfo)
    ]
    assert [b.p for b in blurs] == [0.0, 0.9, 0.5]


def test_same_seed_gives_the_reference_crops() -> None:
    """Default arguments reproduce the reference pipeline draw for draw (its blur inversion included)."""
    image = _image()
    ours = DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), 2, global_crops_size=24, local_crops_size=12)
    reference = _reference_recipe(24, 12, 2)
    for seed in range(4):
        torch.manual_seed(seed)
        out = ours(image)
        torch.manual_seed(seed)
        expected = reference(image)
        for got, want in zip(out["global_crops"] + out["local_crops"], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_blur_probabilities_are_configurable() -> None:
    image = _image()
    honest = DataAugmentationDINO(
        (0.32, 1.0),
        (0.05, 0.32),
        0,
        global_crops_size=24,
        global_crops_1_blur_p=1.0,
        global_crops_2_blur_p=0.1,
        local_crops_blur_p=0.5,
    )
    inverted = DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), 0, global_crops_size=24)
    torch.manual_seed(3)
    a = honest(image)["global_crops"][0]
    torch.manual_seed(3)
    b = inverted(image)["global_crops"][0]
    assert not torch.equal(a, b)


@pytest.mark.parametrize("p", [0.0, 0.2, 1.0])
def test_gaussian_blur_p_is_the_probability_of_blurring(p: float) -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8))
    blur = GaussianBlur(p=p)
    torch.manual_seed(0)
    blurred = sum(np.asarray(blur(image)).tobytes() != image.tobytes() for _ in range(60)) / 60
    assert abs(blurred - p) < 0.15  # the reference's inverted semantics would give 1 - p


def test_normalisation_uses_imagenet_statistics() -> None:
    aug = DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), 1)
    normalize = aug.local_transfo.transforms[-1].transforms[-1]
    assert tuple(normalize.mean) == IMAGENET_DEFAULT_MEAN == (0.485, 0.456, 0.406)
    assert tuple(normalize.std) == IMAGENET_DEFAULT_STD == (0.229, 0.224, 0.225)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"global_crops_scale": (0.0, 1.0)},
        {"local_crops_scale": (0.5, 0.2)},
        {"local_crops_number": -1},
        {"global_crops_size": 0},
        {"global_crops_1_blur_p": 1.5},
    ],
)
def test_bad_arguments_are_errors(kwargs: dict) -> None:
    args = {"global_crops_scale": (0.32, 1.0), "local_crops_scale": (0.05, 0.32), "local_crops_number": 2} | kwargs
    with pytest.raises(ValueError):
        DataAugmentationDINO(**args)


def test_fast_crops_follow_the_random_resized_crop_distribution() -> None:
    np.random.seed(0)
    boxes = _random_boxes(20_000, 30, 40, (0.05, 0.32))  # [n, 4]: x0, y0, x1, y1
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 40).all() and (boxes[:, 3] <= 30).all()
    area = width * height / (30 * 40)
    assert area.min() >= 0.05 - 1e-9 and area.max() <= 0.32 + 1e-9
    assert abs(area.mean() - (0.05 + 0.32) / 2) < 0.005  # uniform in the scale range
    ratio = width / height
    assert ratio.min() >= 3 / 4 - 1e-9 and ratio.max() <= 4 / 3 + 1e-9
    # no draw fits a 10 x 100 image at 90 % of its area: the whole image, clamped to ratio 4/3
    wide = _random_boxes(50, 10, 100, (0.9, 1.0))
    np.testing.assert_allclose(wide[:, 2] - wide[:, 0], 40 / 3)
    np.testing.assert_allclose(wide[:, 3] - wide[:, 1], 10)


def test_fast_crops_cut_the_drawn_box_and_flip_half_of_them() -> None:
    """A horizontal ramp: a crop's ramp runs left to right unless it was flipped, and the full-image crop at the
    image size is the image itself."""
    ramp = np.tile(np.arange(0, 240, 8, dtype=np.uint8), (30, 1))  # [30, 30], 0 .. 232 left to right
    image = Image.fromarray(np.stack([ramp] * 3, axis=-1))
    np.random.seed(1)
    crops = _resized_crops(image, 400, 12, (0.3, 1.0))
    assert all(c.shape == (3, 12, 12) and c.dtype == torch.uint8 for c in crops)
    rising = [bool(c[0, 6, -2].int() > c[0, 6, 1].int()) for c in crops]
    assert 0.4 < sum(rising) / len(rising) < 0.6
    np.random.seed(2)
    whole = _resized_crops(image, 50, 30, (1.0, 1.0))
    assert any(torch.equal(c, torch.from_numpy(np.array(image)).permute(2, 0, 1)) for c in whole)


def test_fast_crops_need_the_colours_on_the_batch_and_are_seeded_by_numpy() -> None:
    with pytest.raises(ValueError, match="color_on_batch"):
        DataAugmentationDINO((0.4, 1.0), (0.1, 0.4), 2, fast_crops=True)
    aug = DataAugmentationDINO((0.4, 1.0), (0.1, 0.4), 3, 16, 8, color_on_batch=True, fast_crops=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    with seeded(5, 1):
        first = aug(image)
    with seeded(5, 1):
        again = aug(image)
    with seeded(5, 2):
        other = aug(image)
    crops = first["global_crops"] + first["local_crops"]
    assert [tuple(c.shape) for c in crops] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 3
    assert all(c.dtype == torch.uint8 for c in crops)
    assert all(torch.equal(a, b) for a, b in zip(crops, again["global_crops"] + again["local_crops"], strict=True))
    assert not torch.equal(first["global_crops"][0], other["global_crops"][0])
