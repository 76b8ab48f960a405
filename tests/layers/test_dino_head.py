import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dinov2.layers import DINOHead
from dinov2.layers.dino_head import WeightNormLinear


def test_keys_and_shapes():
    head = DINOHead(384, 1000, hidden_dim=64, bottleneck_dim=32)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "mlp.0.weight": (64, 384),
        "mlp.0.bias": (64,),
        "mlp.2.weight": (64, 64),
        "mlp.2.bias": (64,),
        "mlp.4.weight": (32, 64),
        "mlp.4.bias": (32,),
        "last_layer.weight_g": (1000, 1),
        "last_layer.weight_v": (1000, 32),
    }
    assert torch.equal(head.last_layer.weight_g, torch.ones(1000, 1))
    assert head.last_layer.weight_g.requires_grad
    assert all(torch.equal(head.mlp[i].bias, torch.zeros_like(head.mlp[i].bias)) for i in (0, 2, 4))


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_weight_norm_matches_legacy_torch_weight_norm():
    legacy = nn.utils.weight_norm(nn.Linear(8, 5, bias=False))
    with torch.no_grad():
        legacy.weight_g.uniform_(0.5, 2.0)
    ours = WeightNormLinear(8, 5)
    ours.load_state_dict(legacy.state_dict())
    x = torch.randn(3, 8)
    torch.testing.assert_close(ours(x), legacy(x))
    assert set(legacy.state_dict()) == set(ours.state_dict())


def test_forward_equals_manual():
    head = DINOHead(16, 10, nlayers=2, hidden_dim=12, bottleneck_dim=6)
    x = torch.randn(4, 16)
    z = head.mlp[2](F.gelu(head.mlp[0](x)))
    z = z / z.norm(dim=-1, keepdim=True)
    v, g = head.last_layer.weight_v, head.last_layer.weight_g
    torch.testing.assert_close(head(x), z @ (g * v / v.norm(dim=1, keepdim=True)).T)


@pytest.mark.parametrize(("dtype", "eps"), [(torch.float32, 1e-12), (torch.float16, 1e-6)])
def test_normalize_eps_depends_on_dtype(monkeypatch, dtype, eps):
    seen = []
    original = F.normalize

    def spy(*args, **kwargs):
        seen.append(kwargs["eps"])
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "normalize", spy)
    head = DINOHead(8, 4, nlayers=1, bottleneck_dim=4).to(dtype)
    head(torch.randn(2, 8, dtype=dtype))
    assert seen == [eps]


def test_one_layer_and_batchnorm_variants():
    assert isinstance(DINOHead(8, 4, nlayers=0).mlp, nn.Linear)  # nlayers is clamped to >= 1
    head = DINOHead(8, 4, use_bn=True, nlayers=3, hidden_dim=6, bottleneck_dim=5)
    assert [type(m).__name__ for m in head.mlp] == [
        "Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU", "Linear"
    ]  # fmt: skip
    assert head(torch.randn(3, 8)).shape == (3, 4)
