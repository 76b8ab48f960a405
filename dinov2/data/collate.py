"""Batches multi-crop samples and draws the iBOT masks of the global crops."""

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from dinov2.utils.dtype import TypeSpec, as_torch_dtype

__all__ = ["collate_data_and_cast"]


def _check_mask_arguments(
    samples_list: Sequence, mask_ratio_tuple: tuple[float, float], mask_probability: float, mask_generator: Any
) -> None:
    if not samples_list:
        raise ValueError("collate_data_and_cast got an empty batch")
    if mask_generator is None:
        raise ValueError("collate_data_and_cast needs mask_generator (a dinov2.data.MaskingGenerator)")
    if not 0.0 <= mask_probability <= 1.0:
        raise ValueError(f"mask_probability={mask_probability} must lie in [0, 1]")
    r_min, r_max = mask_ratio_tuple
    if not 0.0 <= r_min <= r_max <= 1.0:
        raise ValueError(f"mask_ratio_tuple={mask_ratio_tuple} must satisfy 0 <= min <= max <= 1")


def _stack_crops(crops: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Global and local crops of all samples, crop-index-major: ``[n_g*B, 3, G, G]``, ``[n_l*B, 3, L, L]``."""
    n_global_crops = len(crops[0]["global_crops"])
    n_local_crops = len(crops[0]["local_crops"])
    global_crops = torch.stack([c["global_crops"][i] for i in range(n_global_crops) for c in crops])
    if n_local_crops == 0:
        return global_crops, torch.empty(0, *global_crops.shape[1:2], 0, 0)  # [0, 3, 0, 0]
    return global_crops, torch.stack([c["local_crops"][i] for i in range(n_local_crops) for c in crops])


def _stratified_masks(
    n_crops: int,
    n_tokens: int,
    mask_ratio_tuple: tuple[float, float],
    mask_probability: float,
    mask_generator: Callable[[int], np.ndarray],
) -> tuple[list[torch.Tensor], int]:
    """One ``[N]`` bool mask per crop, ``int(n_crops * mask_probability)`` of them non-empty with stratified
    ratios, shuffled; and the upper bound on their total masked count."""
    n_samples_masked = int(n_crops * mask_probability)
    # float32 as in the official DINOv2 code, so the per-crop limits int(N * probs[i]) truncate the same way.
    probs = torch.linspace(*mask_ratio_tuple, n_samples_masked + 1)  # [n_masked + 1]
    upperbound = 0
    masks_list = []
    for i in range(n_samples_masked):
        prob_min, prob_max = probs[i], probs[i + 1]
        num_to_mask = int(n_tokens * random.uniform(prob_min, prob_max))
        masks_list.append(torch.from_numpy(np.asarray(mask_generator(num_to_mask), dtype=bool)).flatten())  # [N]
        upperbound += int(n_tokens * prob_max)
    for _ in range(n_samples_masked, n_crops):
        masks_list.append(torch.zeros(n_tokens, dtype=torch.bool))  # [N]
    random.shuffle(masks_list)
    return masks_list, upperbound


def collate_data_and_cast(
    samples_list: Sequence[tuple[dict[str, Any], Any]],
    mask_ratio_tuple: tuple[float, float],
    mask_probability: float,
    dtype: TypeSpec,
    n_tokens: int | None = None,
    mask_generator: Callable[[int], np.ndarray] | None = None,
    batch_transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Stacks crops crop-index-major and masks ``int(2B * mask_probability)`` of the 2B global crops.

    The masked crops get stratified mask ratios: crop i of them draws its ratio uniformly in
    ``[probs[i], probs[i+1]]`` with ``probs = linspace(r_min, r_max, n_masked + 1)``, so together they span the
    ratio range; the mask list is then shuffled over both global-crop groups. ``upperbound`` is the sum of the
    per-crop maxima ``int(N * probs[i+1])``, an upper bound on the number of masked tokens ``M`` used to size
    fixed buffers. Keys and dtypes are those ``SSLMetaArch`` reads. ``batch_transform`` (global crops, local
    crops) -> (global crops, local crops) runs on the stacked crops first (the colours drawn per batch, see
    ``DataAugmentationDINO.batch_transform``).
    """
    _check_mask_arguments(samples_list, mask_ratio_tuple, mask_probability, mask_generator)
    dtype = as_torch_dtype(dtype)
    if n_tokens is None:
        n_tokens = mask_generator.num_patches
    collated_global_crops, collated_local_crops = _stack_crops([sample[0] for sample in samples_list])
    if batch_transform is not None:
        collated_global_crops, collated_local_crops = batch_transform(collated_global_crops, collated_local_crops)
    masks_list, upperbound = _stratified_masks(
        len(collated_global_crops), n_tokens, mask_ratio_tuple, mask_probability, mask_generator
    )
    collated_masks = torch.stack(masks_list)  # [n_g*B, N] bool
    if collated_masks.shape[1] != n_tokens:
        raise ValueError(f"mask_generator makes masks of {collated_masks.shape[1]} patches but n_tokens={n_tokens}")
    mask_indices_list = collated_masks.flatten().nonzero().flatten()  # [M] int64
    per_crop = collated_masks.sum(dim=-1, keepdim=True).clamp(min=1).to(torch.float32)  # [n_g*B, 1]
    masks_weight = (1.0 / per_crop).expand_as(collated_masks)[collated_masks]  # [M] float32

    return {
        "collated_global_crops": collated_global_crops.to(dtype),
        "collated_local_crops": collated_local_crops.to(dtype),
        "collated_masks": collated_masks,
        "mask_indices_list": mask_indices_list,
        "masks_weight": masks_weight,
        "upperbound": upperbound,
        "n_masked_patches": torch.full((1,), fill_value=mask_indices_list.shape[0], dtype=torch.long),  # [1]
    }
