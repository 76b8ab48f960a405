"""DINO loss on the CLS token: cross-entropy between student and (centered or Sinkhorn-Knopp) teacher targets."""

import torch
import torch.nn.functional as F

from dinov2.distributed import get_global_size
from dinov2.loss._teacher_targets import _MomentumCenter, sinkhorn_knopp

__all__ = ["DINOLoss"]


class DINOLoss(_MomentumCenter):
    """``DINOLoss``: buffer ``center`` [1, K], student temperature 0.1, center momentum 0.9.

    The center update is deferred (see ``dinov2.loss._teacher_targets``); the trainer needs no
    extra call before saving because ``state_dict()`` folds a pending update in.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        if out_dim < 1:
            raise ValueError(f"out_dim (number of prototypes) must be >= 1, got {out_dim}")
        if student_temp <= 0:
            raise ValueError(f"student_temp must be > 0, got {student_temp}")
        super().__init__((1, out_dim), center_momentum)
        self.out_dim = out_dim
        self.student_temp = student_temp

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Targets ``softmax((t - center) / teacher_temp)`` [B, K] in float32, after folding the pending update."""
        self.apply_center_update()
        return F.softmax((teacher_output.to(torch.float32) - self.center) / teacher_temp, dim=-1)  # [B, K]

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets [B, K]; each row sums to 1 and every prototype gets an equal share of the
        global batch (B_local * world size rows)."""
        n_total = teacher_output.shape[0] * get_global_size()
        return sinkhorn_knopp(teacher_output, teacher_temp, n_total, n_iterations)

    def forward(
        self, student_output_list: list[torch.Tensor], teacher_out_softmaxed_centered_list: list[torch.Tensor]
    ) -> torch.Tensor:
        """Sum over every (student, teacher) pair given of the batch-mean cross-entropy ``-sum_k t log p_s``.

        Pair selection (skipping identical views) and the normalisation by the number of pairs are the caller's.
        Computed in float32.
        """
        total = torch.zeros((), device=student_output_list[0].device)  # []
        for student_output in student_output_list:
            log_probs = F.log_softmax(student_output.to(torch.float32) / self.student_temp, dim=-1)  # [B, K]
            for teacher_probs in teacher_out_softmaxed_centered_list:
                total = total - (teacher_probs.to(torch.float32) * log_probs).sum(dim=-1).mean()
        return total

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """Queues this step's teacher CLS logits [B, K] into the center (applied at the next target computation)."""
        self.reduce_center_update(teacher_output)

    @torch.no_grad()
    def reduce_center_update(self, teacher_output: torch.Tensor) -> None:
        batch_sum = teacher_output.to(torch.float32).sum(dim=0, keepdim=True)  # [1, K]
        self._start_center_update(batch_sum, teacher_output.shape[0])
