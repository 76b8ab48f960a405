"""KoLeo regulariser (Kozachenko-Leonenko differential entropy estimator, Sablayrolles et al. 2018)."""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KoLeoLoss"]


class KoLeoLoss(nn.Module):
    """``-mean_i log(d_i + eps)`` with ``d_i`` the distance of sample i to its nearest neighbour in the batch.

    Computed in float32 whatever the input dtype: in fp16 the 1e-8 epsilons underflow and duplicate rows give
    ``inf``. Uses the local batch only, as the official DINOv2 code does, so the loss values match its runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pdist = nn.PairwiseDistance(2, eps=1e-8)

    def pairwise_NNs_inner(self, x: torch.Tensor) -> torch.Tensor:
        """Index [B] of each row's nearest neighbour by inner product, excluding itself (rows L2-normalised)."""
        dots = x @ x.t()  # [B, B]
        dots.fill_diagonal_(-1)
        return dots.argmax(dim=1)  # [B]

    def forward(self, student_output: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """KoLeo loss of ``student_output`` [B, D]; B must be >= 2 (a nearest neighbour needs another sample)."""
        if student_output.ndim != 2:
            raise ValueError(f"KoLeoLoss expects a [B, D] tensor, got shape {tuple(student_output.shape)}")
        if student_output.shape[0] < 2:
            raise ValueError(
                f"KoLeoLoss needs at least 2 samples per rank, got {student_output.shape[0]}; raise "
                "train.batch_size_per_gpu or disable KoLeo with dino.koleo_loss_weight=0"
            )
        with torch.autocast(device_type=student_output.device.type, enabled=False):
            x = F.normalize(student_output.to(torch.float32), p=2, dim=-1, eps=eps)  # [B, D]
            with torch.no_grad():
                neighbours = self.pairwise_NNs_inner(x)  # [B]
            distances = self.pdist(x, x[neighbours])  # [B]
            return -torch.log(distances + eps).mean()
