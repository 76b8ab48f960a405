import random

import pytest
import torch

from dinov2.data import MaskingGenerator, collate_data_and_cast


def _samples(batch: int, n_local: int, global_size: int = 4, local_size: int = 2) -> list:
    """Crop (sample s, crop c) is filled with 10*s + c (local crops: 100 + 10*s + c) to check the ordering."""
    samples = []
    for s in range(batch):
        crops = {
            "global_crops": [torch.full((3, global_size, global_size), 10.0 * s + c) for c in range(2)],
            "local_crops": [torch.full((3, local_size, local_size), 100.0 + 10 * s + c) for c in range(n_local)],
        }
        samples.append((crops, None))
    return samples


def test_worked_example_from_the_spec() -> None:
    """B=4, N=256 (224/14), ratios (0.1, 0.5), p=0.5: n_masked = int(8 * 0.5) = 4, probs = [.1, .2, .3, .4, .5],
    upperbound = int(256*.2) + int(256*.3) + int(256*.4) + int(256*.5) = 51 + 76 + 102 + 128 = 357."""
    random.seed(0)
    out = collate_data_and_cast(
        _samples(4, 3),
        mask_ratio_tuple=(0.1, 0.5),
        mask_probability=0.5,
        dtype=torch.half,
        n_tokens=256,
        mask_generator=MaskingGenerator(16, max_num_patches=0.5 * 224 // 14 * 224 // 14),  # a float, as in training
    )
    assert set(out) == {
        "collated_global_crops",
        "collated_local_crops",
        "collated_masks",
        "mask_indices_list",
        "masks_weight",
        "upperbound",
        "n_masked_patches",
    }
    assert out["collated_global_crops"].shape == (8, 3, 4, 4) and out["collated_global_crops"].dtype == torch.half
    assert out["collated_local_crops"].shape == (12, 3, 2, 2) and out["collated_local_crops"].dtype == torch.half
    masks = out["collated_masks"]
    assert masks.shape == (8, 256) and masks.dtype == torch.bool
    assert out["upperbound"] == 357 and isinstance(out["upperbound"], int)

    per_crop = masks.sum(dim=1)
    assert int((per_crop > 0).sum()) == 4  # the 4 masked crops all got patches (targets are >= 25)
    bounds = [51, 76, 102, 128]  # crop i of the strata masks at most int(N * probs[i + 1]) patches
    assert all(c <= b for c, b in zip(sorted(per_crop[per_crop > 0].tolist()), bounds))
    assert all(c >= int(256 * 0.1) * 0.5 for c in per_crop[per_crop > 0].tolist())

    m = int(masks.sum())
    assert m <= 357
    assert out["n_masked_patches"].tolist() == [m] and out["n_masked_patches"].dtype == torch.int64
    assert out["mask_indices_list"].dtype == torch.int64
    assert torch.equal(out["mask_indices_list"], torch.nonzero(masks.flatten()).flatten())
    weights = out["masks_weight"]
    assert weights.dtype == torch.float32 and weights.shape == (m,)
    rows = out["mask_indices_list"] // 256
    torch.testing.assert_close(weights, 1.0 / per_crop[rows].float())
    assert abs(float(weights.sum()) - 4.0) < 1e-4  # each masked crop's weights sum to one


def test_crops_are_stacked_crop_index_major() -> None:
    out = collate_data_and_cast(
        _samples(3, 2),
        (0.1, 0.5),
        0.0,
        torch.float32,
        n_tokens=4,
        mask_generator=MaskingGenerator(2, max_num_patches=2),
    )
    assert out["collated_global_crops"][:, 0, 0, 0].tolist() == [0, 10, 20, 1, 11, 21]
    assert out["collated_local_crops"][:, 0, 0, 0].tolist() == [100, 110, 120, 101, 111, 121]


def test_no_masking_with_probability_zero() -> None:
    out = collate_data_and_cast(
        _samples(2, 1), (0.1, 0.5), 0.0, "fp32", n_tokens=16, mask_generator=MaskingGenerator(4, max_num_patches=8)
    )
    assert not out["collated_masks"].any()
    assert out["upperbound"] == 0 and out["n_masked_patches"].tolist() == [0]
    assert out["mask_indices_list"].numel() == 0 and out["masks_weight"].numel() == 0
    assert out["collated_global_crops"].dtype == torch.float32


def test_masks_are_shuffled_over_both_global_crop_groups() -> None:
    random.seed(0)
    generator = MaskingGenerator(4, max_num_patches=8)
    first_half = second_half = 0
    for _ in range(20):
        masks = collate_data_and_cast(_samples(2, 0), (0.3, 0.5), 0.5, torch.float32, mask_generator=generator)[
            "collated_masks"
        ]
        first_half += int(masks[:2].any(dim=1).sum())
        second_half += int(masks[2:].any(dim=1).sum())
    assert first_half > 0 and second_half > 0 and first_half + second_half == 40


def test_mask_generator_is_required() -> None:
    with pytest.raises(ValueError, match="mask_generator"):
        collate_data_and_cast(_samples(1, 0), (0.1, 0.5), 0.5, torch.half)
