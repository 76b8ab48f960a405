"""LayerScale (Touvron et al. 2021, CaiT): a learnable per-channel gain on each residual branch."""

import torch
from torch import Tensor, nn

__all__ = ["LayerScale"]


class LayerScale(nn.Module):
    """``x * gamma`` with ``gamma`` filled with ``init_values``; key ``gamma`` as in the released checkpoints.

    ``gamma`` is created empty and filled by :meth:`reset_parameters`, so the layer can be built on the meta device
    and materialised later.
    """

    def __init__(
        self,
        dim: int,
        init_values: float | Tensor = 1e-5,
        inplace: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.inplace = inplace
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))  # [D]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_values)

    def forward(self, x: Tensor) -> Tensor:
        return x.mul_(self.gamma) if self.inplace else x * self.gamma
