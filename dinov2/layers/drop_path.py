"""Per-sample stochastic depth (Huang et al. 2016), used by ``Block`` for small rates."""

from torch import Tensor, nn

__all__ = ["drop_path", "DropPath"]


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """Zeroes whole samples with probability ``drop_prob`` and rescales the kept ones by ``1 / (1 - drop_prob)``.

    Identity in eval mode or at rate 0, so inference never depends on the RNG.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)  # [B, 1, ..., 1]
    if keep_prob > 0.0:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    """Module form of :func:`drop_path`; follows the module's ``training`` flag."""

    def __init__(self, drop_prob: float | None = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob or 0.0, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
