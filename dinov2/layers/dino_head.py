"""DINO projection head: MLP -> L2 normalisation -> weight-normalised linear layer to K prototypes."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

__all__ = ["DINOHead", "WeightNormLinear"]


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight ``weight_g * weight_v / ||weight_v||`` (row-wise norm).

    Same maths and the same state-dict keys (``weight_g [out, 1]``, ``weight_v [out, in]``) as the deprecated
    ``torch.nn.utils.weight_norm`` the released heads were saved with, but with two plain parameters: no hooks, so
    it works on the meta device and with FSDP2, and the parametrization API's renamed keys never appear.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight_g = nn.Parameter(torch.empty(out_features, 1, device=device, dtype=dtype))  # [K, 1]
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))  # [K, C]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``weight_v`` gets nn.Linear's default init and ``weight_g`` is 1, so every weight row starts at norm 1."""
        nn.init.kaiming_uniform_(self.weight_v, a=5**0.5)
        nn.init.ones_(self.weight_g)

    @property
    def weight(self) -> Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))  # [K, C]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias=False"


def _build_mlp(
    nlayers: int,
    in_dim: int,
    bottleneck_dim: int,
    hidden_dim: int | None = None,
    use_bn: bool = False,
    bias: bool = True,
) -> nn.Module:
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=bias)]
    if use_bn:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers.append(nn.GELU())
    for _ in range(nlayers - 2):
        layers.append(nn.Linear(hidden_dim, hidden_dim, bias=bias))
        if use_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.GELU())
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """``last_layer(normalize(mlp(x)))``: ``[*, in_dim] -> [*, out_dim]`` prototype scores.

    Keys ``mlp.{0,2,4}.*`` and ``last_layer.weight_g``/``weight_v``, as in the released checkpoints. ``weight_g``
    is trainable (no norm freezing, unlike DINO v1).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        mlp_bias: bool = True,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        self.mlp = _build_mlp(nlayers, in_dim, bottleneck_dim, hidden_dim=hidden_dim, use_bn=use_bn, bias=mlp_bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """Fills every parameter (safe after ``to_empty``): MLP Linears trunc-normal 0.02 / zero bias, BN and
        the last layer to their defaults."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d | WeightNormLinear):
                m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        x = self.mlp(x)  # [*, bottleneck]
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)  # [*, K]
