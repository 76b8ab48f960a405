"""Watching a run for DINO collapse.

Two failures make the DINO targets worthless while the loss still looks fine:

- *uniform collapse*: the teacher's CLS outputs stop depending on the image; after centering every target is
  the uniform distribution and each DINO cross-entropy equals ``log K`` (K prototypes);
- *one-hot collapse*: every image is sent to the same few prototypes (the usage entropy drops to ~0).

:func:`teacher_statistics` measures the teacher side each iteration; :class:`CollapseMonitor` keeps the loss
terms against their uniform values and warns once, naming the config keys to change, when a collapse lasts.
"""

import logging
import math
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

__all__ = ["CollapseMonitor", "teacher_statistics", "uniform_loss_values"]

logger = logging.getLogger("dinov2")


@torch.no_grad()
def teacher_statistics(cls: Tensor, logits: Tensor, targets: Tensor, center: Tensor | None) -> dict[str, Tensor]:
    """Collapse statistics of one teacher batch (0-d float32 tensors, no host sync).

    Args:
        cls: teacher backbone CLS features [N, D].
        logits: teacher DINO head outputs [N, K].
        targets: teacher target distributions [N, K] (after centering or Sinkhorn-Knopp).
        center: the DINO center [1, K], or None with Sinkhorn-Knopp.

    Returns ``teacher_cls_std`` (batch std of the L2-normalised CLS features times sqrt(D): about 1 for
    directions spread like random ones, 0 when every image gives the same feature), ``teacher_logit_std`` (batch
    std of the head logits, to compare with the teacher temperature), ``teacher_entropy`` (mean entropy of the
    targets / log K: 1 is uniform) and ``teacher_usage_entropy`` (entropy of the batch-mean target / log K: ~0 when
    all images pick the same prototypes), plus ``dino_center_std`` (spread of the center over prototypes).
    """
    cls, logits, targets = cls.float(), logits.float(), targets.float()
    log_k = math.log(targets.shape[-1]) if targets.shape[-1] > 1 else 1.0
    normalized = F.normalize(cls, dim=-1)  # [N, D]
    stats = {
        "teacher_cls_std": normalized.std(dim=0).mean() * math.sqrt(cls.shape[-1]),
        "teacher_logit_std": logits.std(dim=0).mean(),
        "teacher_entropy": _entropy(targets).mean() / log_k,
        "teacher_usage_entropy": _entropy(targets.mean(dim=0)) / log_k,
    }
    if center is not None:
        stats["dino_center_std"] = center.float().std()
    return stats


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * probs.clamp_min(1e-30).log()).sum(dim=-1)


def uniform_loss_values(cfg: DictConfig) -> dict[str, float]:
    """Each logged loss term's value when the teacher targets are uniform (and the student matches them): the
    DINO terms weigh ``log K`` per pair of views; iBOT averages ``log K`` over the masked crops but divides by all
    global crops, of which ``ibot.mask_sample_probability`` are masked. KoLeo has none."""
    n_local = int(cfg.crops.local_crops_number)
    n_terms = max(2 * n_local, 1) + 2
    values = {}
    if cfg.dino.loss_weight > 0:
        log_k = math.log(cfg.dino.head_n_prototypes)
        values["dino_global_crops_loss"] = cfg.dino.loss_weight * 2 * log_k / n_terms
        if n_local > 0:
            values["dino_local_crops_loss"] = cfg.dino.loss_weight * 2 * n_local * log_k / n_terms
    if cfg.ibot.loss_weight > 0:
        ibot_k = cfg.ibot.head_n_prototypes if cfg.ibot.separate_head else cfg.dino.head_n_prototypes
        masked_share = cfg.ibot.mask_sample_probability
        values["ibot_loss"] = cfg.ibot.loss_weight * masked_share * math.log(ibot_k)
    return values


_ADVICE = (
    "the DINO targets carry no image information. Keys to change: student.layerscale (0.1-1.0 for networks of "
    "depth <= 18), dino.head_n_prototypes (about 1024 below 20k images), teacher.teacher_temp / "
    "teacher.warmup_teacher_temp (0.02-0.04 on small data), teacher.momentum_teacher (0.99 for short runs), "
    "optim.base_lr; or start from dinov2/configs/train/small_data.yaml"
)


@dataclass
class CollapseMonitor:
    """Warns once when, after ``start_iteration`` (the end of the warm-up), the DINO loss stays within
    ``tolerance`` of its uniform value, or the teacher's CLS std stays below ``min_cls_std``, for ``patience``
    consecutive iterations. :meth:`update` also returns the ``<term>_vs_uniform`` ratios to log."""

    uniform: dict[str, float]
    start_iteration: int
    patience: int = 50
    tolerance: float = 0.03
    min_cls_std: float = 0.02
    warned: bool = False
    _recent: deque = field(default_factory=deque)

    def update(self, iteration: int, values: dict[str, float]) -> dict[str, float]:
        ratios = {
            f"{name}_vs_uniform": values[name] / uniform
            for name, uniform in self.uniform.items()
            if name in values and uniform > 0
        }
        if iteration < self.start_iteration or self.warned:
            return ratios
        reason = self._collapse_reason(values, ratios)
        if reason is None:
            self._recent.clear()
            return ratios
        self._recent.append(iteration)
        if len(self._recent) >= self.patience:
            self.warned = True
            logger.warning(
                "DINO collapse: %s for %d consecutive iterations (up to iteration %d): %s",
                reason,
                len(self._recent),
                iteration,
                _ADVICE,
            )
        return ratios

    def _collapse_reason(self, values: dict[str, float], ratios: dict[str, float]) -> str | None:
        dino_ratio = ratios.get("dino_global_crops_loss_vs_uniform")
        if dino_ratio is not None and dino_ratio > 1 - self.tolerance:
            return f"dino_global_crops_loss at {100 * dino_ratio:.1f} % of its uniform value"
        cls_std = values.get("teacher_cls_std")
        if cls_std is not None and cls_std < self.min_cls_std:
            return f"teacher_cls_std {cls_std:.4f} (image-independent teacher features)"
        return None
