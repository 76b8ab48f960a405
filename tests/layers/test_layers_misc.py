import inspect
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dinov2.layers import LayerScale, Mlp, PatchEmbed, SwiGLUFFN, SwiGLUFFNFused


def test_layer_scale_meta_then_reset():
    ls = LayerScale(6, init_values=0.3, device="meta")
    assert ls.gamma.is_meta
    ls.to_empty(device="cpu")
    ls.reset_parameters()
    torch.testing.assert_close(ls.gamma, torch.full((6,), 0.3))
    x = torch.randn(2, 6)
    torch.testing.assert_close(ls(x), x * 0.3)
    inplace = LayerScale(6, init_values=2.0, inplace=True)
    y = x.clone()
    assert inplace(y) is y and torch.allclose(y, 2 * x)


@pytest.mark.parametrize(("nominal", "expected"), [(6144, 4096), (4096, 2736), (3072, 2048), (1536, 1024)])
def test_swiglu_fused_hidden_rounding(nominal, expected):
    ffn = SwiGLUFFNFused(64, nominal, device="meta")
    assert ffn.w12.weight.shape == (2 * expected, 64)
    assert ffn.w3.weight.shape == (64, expected)


def test_swiglu_fused_keeps_the_constructor_and_keys():
    assert inspect.signature(SwiGLUFFNFused) == inspect.signature(SwiGLUFFN)
    ffn = SwiGLUFFNFused(in_features=8, hidden_features=24, out_features=5, bias=False, device="meta")
    assert {k: tuple(v.shape) for k, v in ffn.state_dict().items()} == {"w12.weight": (32, 8), "w3.weight": (5, 16)}


def test_swiglu_forward():
    ffn = SwiGLUFFN(8, 6)
    x = torch.randn(3, 8)
    h = x @ ffn.w12.weight.T + ffn.w12.bias
    expected = (F.silu(h[:, :6]) * h[:, 6:]) @ ffn.w3.weight.T + ffn.w3.bias
    torch.testing.assert_close(ffn(x), expected)


def test_mlp_keys_and_forward():
    mlp = Mlp(8, 16, bias=False)
    assert set(mlp.state_dict()) == {"fc1.weight", "fc2.weight"}
    x = torch.randn(2, 8)
    torch.testing.assert_close(mlp(x), F.gelu(x @ mlp.fc1.weight.T) @ mlp.fc2.weight.T)


@pytest.mark.parametrize("act_layer", [nn.GELU, partial(nn.GELU, approximate="tanh"), nn.SiLU])
def test_mlp_no_grad_path_equals_grad_path(act_layer):
    """Without autograd GELU runs in place on fc1's output: bit-identical outputs, and the input is untouched."""
    mlp = Mlp(8, 16, act_layer=act_layer)
    x = torch.randn(2, 5, 8)
    x_before = x.clone()
    with_grad = mlp(x)
    expected = mlp.fc2(act_layer()(mlp.fc1(x)))
    assert torch.equal(with_grad, expected)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            assert torch.equal(mlp(x), expected.detach())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = mlp(x)
        expected_bf16 = mlp.fc2(act_layer()(mlp.fc1(x)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(bf16, mlp(x).detach())
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, expected_bf16)
    assert torch.equal(x, x_before)


def test_patch_embed_shapes_and_errors():
    pe = PatchEmbed(img_size=28, patch_size=14, in_chans=3, embed_dim=10)
    assert pe.num_patches == 4 and pe.patches_resolution == (2, 2)
    x = torch.randn(2, 3, 28, 42)
    assert pe(x).shape == (2, 6, 10)
    pe.flatten_embedding = False
    assert pe(x).shape == (2, 2, 3, 10)
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        pe(torch.randn(1, 3, 30, 28))


def test_patch_embed_matches_its_convolution_on_cpu():
    """On CPU the patches are projected by one matrix product: same values and gradients as the convolution."""
    torch.manual_seed(0)
    pe = PatchEmbed(img_size=18, patch_size=(9, 6), in_chans=3, embed_dim=8)
    x = torch.randn(2, 3, 18, 24, requires_grad=True)
    tokens = pe(x)  # [2, 2 * 4, 8]
    expected = pe.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens, expected)
    weights = torch.randn_like(tokens)
    grads = torch.autograd.grad((tokens * weights).sum(), [x, pe.proj.weight, pe.proj.bias])
    expected_grads = torch.autograd.grad((expected * weights).sum(), [x, pe.proj.weight, pe.proj.bias])
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad)
