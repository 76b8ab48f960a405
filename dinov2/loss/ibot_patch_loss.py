"""iBOT loss on masked patch tokens: cross-entropy between student patch logits and teacher patch targets."""

import torch
import torch.nn.functional as F

from dinov2 import distributed
from dinov2.loss._teacher_targets import _MomentumCenter, sinkhorn_knopp

__all__ = ["iBOTPatchLoss", "lossfunc"]


def lossfunc(t: torch.Tensor, s: torch.Tensor, temp: float) -> torch.Tensor:
    """Per-token ``sum_k t_k log softmax(s / temp)_k`` (note the sign: the callers negate it), in float32."""
    return (t.to(torch.float32) * F.log_softmax(s.to(torch.float32) / temp, dim=-1)).sum(dim=-1)


class iBOTPatchLoss(_MomentumCenter):
    """``iBOTPatchLoss``: buffer ``center`` [1, 1, K], student temperature 0.1, center momentum 0.9.

    The center statistic of one step is each rank's mean over its masked tokens, averaged over ranks (the training
    code passes the masked tokens as [1, M, K]).
    """

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        if patch_out_dim < 1:
            raise ValueError(f"patch_out_dim (number of prototypes) must be >= 1, got {patch_out_dim}")
        if student_temp <= 0:
            raise ValueError(f"student_temp must be > 0, got {student_temp}")
        super().__init__((1, 1, patch_out_dim), center_momentum)
        self.patch_out_dim = patch_out_dim
        self.student_temp = student_temp

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_tokens: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Targets ``softmax((t - center) / teacher_temp)`` in float32, after folding the pending update."""
        self.apply_center_update()
        return F.softmax((teacher_patch_tokens.to(torch.float32) - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_output: torch.Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: torch.Tensor,
        n_iterations: int = 3,
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets [M, K] over the masked tokens of all ranks.

        ``n_masked_patches_tensor`` holds this rank's M; it is summed over ranks on a copy, so the caller's tensor
        is left unchanged, and a single process without a process group works too.
        """
        count = n_masked_patches_tensor.detach().to(device=teacher_output.device, dtype=torch.float32, copy=True)
        n_total = distributed.all_reduce(count).sum()  # [] (a tensor: no host sync)
        return sinkhorn_knopp(teacher_output, teacher_temp, n_total, n_iterations)

    def forward(
        self,
        student_patch_tokens: torch.Tensor,
        teacher_patch_tokens: torch.Tensor,
        student_masks_flat: torch.Tensor,
    ) -> torch.Tensor:
        """Dense form (unused by training): per image, the mean cross-entropy over its masked tokens; then the
        mean over images. Inputs [B, N, K], [B, N, K] and a bool mask [B, N]."""
        per_token = lossfunc(teacher_patch_tokens, student_patch_tokens, self.student_temp)  # [B, N]
        masks = student_masks_flat.to(per_token.dtype)  # [B, N]
        per_image = (per_token * masks).sum(dim=-1) / masks.sum(dim=-1).clamp(min=1.0)  # [B]
        return -per_image.mean()

    def forward_masked(
        self,
        student_patch_tokens_masked: torch.Tensor,
        teacher_patch_tokens_masked: torch.Tensor,
        student_masks_flat: torch.Tensor,
        n_masked_patches: int | None = None,
        masks_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Same value as ``forward`` from the masked tokens only ([M, K] each): ``-sum_j l_j w_j / B_img``.

        ``w_j`` defaults to 1 / (#masked tokens of token j's image); ``B_img = student_masks_flat.shape[0]`` counts
        unmasked images too (they contribute 0). ``n_masked_patches`` truncates zero-padded inputs.
        """
        per_token = lossfunc(teacher_patch_tokens_masked, student_patch_tokens_masked, self.student_temp)  # [M]
        if masks_weight is None:
            per_image_weight = 1.0 / student_masks_flat.sum(dim=-1).clamp(min=1.0)  # [B]
            masks_weight = per_image_weight.unsqueeze(-1).expand_as(student_masks_flat)[student_masks_flat]  # [M]
        if n_masked_patches is not None:
            per_token = per_token[:n_masked_patches]
        per_token = per_token * masks_weight.to(per_token.dtype)
        return -per_token.sum() / student_masks_flat.shape[0]

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens: torch.Tensor) -> None:
        """Queues this step's masked teacher logits ([1, M, K] in training) into the center."""
        self.reduce_center_update(teacher_patch_tokens)

    @torch.no_grad()
    def reduce_center_update(self, teacher_patch_tokens: torch.Tensor) -> None:
        tokens = teacher_patch_tokens.to(torch.float32)
        batch_sum = tokens.mean(dim=1).sum(dim=0, keepdim=True)  # [1, K]
        self._start_center_update(batch_sum, tokens.shape[0])
