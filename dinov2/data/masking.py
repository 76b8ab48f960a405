"""Block-wise (BEiT-style) patch masks for the iBOT objective."""

import math
import random

import numpy as np

__all__ = ["MaskingGenerator"]


class MaskingGenerator:
    """Draws boolean ``[height, width]`` masks made of random rectangles.

    ``__call__(n)`` masks at most ``n`` patches: rectangles of ``min_num_patches``..``max_num_patches`` cells with
    aspect ratio log-uniform in [min_aspect, max_aspect] are added until ``n`` is reached or no rectangle fits.
    Randomness comes from Python's ``random`` module, so seed that module for repeatability.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int],
        num_masking_patches: int | None = None,
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        if not isinstance(input_size, tuple | list):
            input_size = (input_size, input_size)
        if len(input_size) != 2 or min(input_size) <= 0:
            raise ValueError(f"input_size={input_size} must be a positive int or a (height, width) pair of patches")
        if min_aspect <= 0:
            raise ValueError(f"min_aspect={min_aspect} must be > 0")
        self.height, self.width = (int(s) for s in input_size)
        self.num_patches = self.height * self.width
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def __repr__(self) -> str:
        # An f-string, so a num_masking_patches of None prints instead of failing.
        return (
            f"Generator({self.height}, {self.width} -> [{self.min_num_patches} ~ {self.max_num_patches}], "
            f"max = {self.num_masking_patches}, {self.log_aspect_ratio[0]:.3f} ~ {self.log_aspect_ratio[1]:.3f})"
        )

    def get_shape(self) -> tuple[int, int]:
        return self.height, self.width

    def _mask(self, mask: np.ndarray, max_mask_patches: int) -> int:
        """Adds one rectangle (10 attempts) that masks between 1 and ``max_mask_patches`` new cells."""
        delta = 0
        for _ in range(10):
            target_area = random.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = random.randint(0, self.height - h)
                left = random.randint(0, self.width - w)
                window = mask[top : top + h, left : left + w]  # [h, w] view
                num_new = h * w - int(window.sum())
                if 0 < num_new <= max_mask_patches:
                    window[...] = True
                    delta += num_new
            if delta > 0:
                break
        return delta

    def __call__(self, num_masking_patches: int = 0) -> np.ndarray:
        mask = np.zeros(self.get_shape(), dtype=bool)  # [h, w]
        mask_count = 0
        while mask_count < num_masking_patches:
            max_mask_patches = num_masking_patches - mask_count
            if self.max_num_patches is not None:
                max_mask_patches = min(max_mask_patches, self.max_num_patches)
            delta = self._mask(mask, max_mask_patches)
            if delta == 0:
                break
            mask_count += delta
        return mask
