import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from dinov2.data.transforms import (
    MaybeToTensor,
    make_classification_eval_transform,
    make_classification_train_transform,
)


def test_eval_transform_resizes_shorter_side_then_center_crops() -> None:
    # A 500x375 image whose right half is white: after Resize(256) it is 341x256 and the 224 center crop keeps
    # columns 58..281, so the white half starts at column 170 - 58 = 112 of the crop.
    pixels = np.zeros((375, 500, 3), dtype=np.uint8)
    pixels[:, 250:] = 255
    out = make_classification_eval_transform()(Image.fromarray(pixels))
    assert out.shape == (3, 224, 224)
    black = (0 - 0.485) / 0.229
    white = (1 - 0.485) / 0.229
    assert torch.allclose(out[0, :, :100], torch.full((224, 100), black), atol=1e-4)
    assert torch.allclose(out[0, :, 125:], torch.full((224, 99), white), atol=1e-4)


def test_eval_transform_sizes() -> None:
    t = make_classification_eval_transform(resize_size=224, crop_size=224)
    assert t(Image.new("RGB", (300, 240))).shape == (3, 224, 224)
    assert t.transforms[0].interpolation == transforms.InterpolationMode.BICUBIC


def test_train_transform() -> None:
    t = make_classification_train_transform(crop_size=32)
    assert t(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
    assert any(isinstance(s, transforms.RandomHorizontalFlip) for s in t.transforms)
    no_flip = make_classification_train_transform(crop_size=32, hflip_prob=0.0)
    assert not any(isinstance(s, transforms.RandomHorizontalFlip) for s in no_flip.transforms)


def test_maybe_to_tensor_passes_tensors_through() -> None:
    x = torch.rand(3, 4, 4)  # [3, H, W]
    assert MaybeToTensor()(x) is x
    assert MaybeToTensor()(Image.new("RGB", (4, 4))).shape == (3, 4, 4)
