import random

import numpy as np
import pytest

from dinov2.data import MaskingGenerator


def test_repr_does_not_crash_without_num_masking_patches() -> None:
    assert "16, 16" in repr(MaskingGenerator(16, max_num_patches=128))


def test_shape_and_dtype() -> None:
    mask = MaskingGenerator((4, 6), max_num_patches=12)(5)
    assert mask.shape == (4, 6) and mask.dtype == np.bool_


def test_zero_target_gives_an_empty_mask() -> None:
    assert not MaskingGenerator(8, max_num_patches=32)(0).any()


@pytest.mark.parametrize("target", [10, 40, 100])
def test_at_most_target_and_close_to_it(target: int) -> None:
    random.seed(0)
    generator = MaskingGenerator(16, max_num_patches=128)  # 224/14 = 16 patches per side, max = half
    counts = [int(generator(target).sum()) for _ in range(50)]
    assert max(counts) <= target
    assert np.mean(counts) >= 0.8 * target


def test_single_block_respects_max_patches_and_is_a_rectangle() -> None:
    random.seed(1)
    generator = MaskingGenerator(16, min_num_patches=4, max_num_patches=20, min_aspect=0.3)
    for _ in range(200):
        mask = np.zeros((16, 16), dtype=bool)
        delta = generator._mask(mask, 20)
        assert 0 < delta <= 20 == generator.max_num_patches
        rows, cols = np.nonzero(mask)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert h * w == delta  # one filled rectangle
        # h and w are rounded from sqrt(area * aspect) and sqrt(area / aspect), aspect in [0.3, 1 / 0.3]
        assert (h - 0.5) / (w + 0.5) <= 1 / 0.3
        assert (h + 0.5) / max(w - 0.5, 1e-9) >= 0.3


def test_each_step_adds_at_most_max_num_patches() -> None:
    random.seed(2)
    generator = MaskingGenerator(16, max_num_patches=6)
    mask = np.zeros((16, 16), dtype=bool)
    for _ in range(20):
        before = mask.sum()
        generator._mask(mask, 6)
        assert 0 <= mask.sum() - before <= 6


def test_invalid_input_size() -> None:
    with pytest.raises(ValueError):
        MaskingGenerator((0, 4))
