import pytest
import torch
from torch import nn

from dinov2.layers import Block, DropPath, LayerScale, NestedTensorBlock
from dinov2.layers.block import _add_scaled_residual, drop_add_residual_stochastic_depth
from dinov2.layers.drop_path import drop_path


def test_drop_path_identity_in_eval_and_at_zero():
    x = torch.randn(8, 4, 3)
    assert drop_path(x, 0.5, training=False) is x
    assert drop_path(x, 0.0, training=True) is x
    module = DropPath(0.5).eval()
    assert torch.equal(module(x), x)


def test_drop_path_statistics():
    x = torch.ones(20000, 3)
    out = drop_path(x, 0.25, training=True)
    dropped = (out == 0).all(dim=1)
    kept = ~dropped
    assert abs(dropped.float().mean().item() - 0.25) < 0.02
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.75))  # whole rows, rescaled


def test_subset_stochastic_depth_rows():
    x = torch.randn(10, 5, 4)
    calls = []

    def residual(t):
        calls.append(t.shape[0])
        return torch.full_like(t, 2.0)

    out = drop_add_residual_stochastic_depth(x, residual, sample_drop_ratio=0.4)
    assert calls == [6]  # int(10 * 0.6) rows computed
    changed = ~torch.isclose(out, x).all(dim=(1, 2))
    assert changed.sum() == 6
    torch.testing.assert_close(out[changed], x[changed] + 2.0 * 10 / 6)
    assert torch.equal(out[~changed], x[~changed])


def _block(drop_path=0.0, cls=Block):
    return cls(16, num_heads=2, qkv_bias=True, init_values=0.5, drop_path=drop_path)


def test_block_eval_equals_formula():
    blk = _block(0.3).eval()
    x = torch.randn(2, 5, 16)
    y = x + blk.ls1(blk.attn(blk.norm1(x)))
    y = y + blk.ls2(blk.mlp(blk.norm2(y)))
    torch.testing.assert_close(blk(x), y)


class _Recorder(nn.Module):
    def __init__(self, log, name):
        super().__init__()
        self.log, self.name = log, name

    def forward(self, x):
        self.log.append(self.name)
        return x


def test_small_rate_uses_drop_path2_for_ffn():
    blk = _block(0.05).train()
    log = []
    blk.drop_path1, blk.drop_path2 = _Recorder(log, "dp1"), _Recorder(log, "dp2")
    blk(torch.randn(2, 5, 16))
    assert log == ["dp1", "dp2"]  # the reference used drop_path1 twice (FIXME upstream)


def test_large_rate_uses_subset_path():
    blk = _block(0.5).train()
    sizes = []
    for name in ("attn_residual_func", "ffn_residual_func"):
        original = getattr(blk, name)
        setattr(blk, name, lambda t, f=original: sizes.append(t.shape[0]) or f(t))
    x = torch.randn(8, 5, 16)
    out = blk(x)
    assert sizes == [4, 4]  # each residual is computed on int(8 * 0.5) rows only
    assert out.shape == x.shape


def test_list_path_uses_subset_for_small_rates():
    blk = _block(0.05, cls=NestedTensorBlock).train()
    sizes = []
    original = blk.attn_residual_func
    blk.attn_residual_func = lambda t: sizes.append(t.shape[0]) or original(t)
    blk([torch.randn(10, 3, 16), torch.randn(20, 2, 16)])
    assert sizes == [9, 19]  # the reference's list path takes the subset path for any rate > 0


def test_nested_list_equals_separate_calls():
    blk = _block(cls=NestedTensorBlock).eval()
    xs = [torch.randn(2, 10, 16), torch.randn(3, 4, 16)]
    outs = blk(xs)
    assert isinstance(outs, list) and len(outs) == 2
    for x, out in zip(xs, outs):
        torch.testing.assert_close(out, blk(x))


def test_nested_rejects_other_types():
    with pytest.raises(TypeError):
        _block(cls=NestedTensorBlock)("not a tensor")


# ---------------------------------------------------------------- no-grad path (LayerScale fused into the residual)


def _formula(blk, x):
    """The block written out with separate LayerScale products and additions (the path autograd uses)."""
    y = x + blk.ls1(blk.attn(blk.norm1(x)))
    return y + blk.ls2(blk.mlp(blk.norm2(y)))


@pytest.mark.parametrize("init_values", [0.3, None])
@pytest.mark.parametrize("cls", [Block, NestedTensorBlock])
def test_no_grad_path_equals_formula_and_keeps_input(init_values, cls):
    blk = cls(16, num_heads=2, qkv_bias=True, init_values=init_values).eval()
    x = torch.randn(3, 7, 16)
    x_before = x.clone()
    with torch.no_grad():
        expected = _formula(blk, x)
        out = blk(x)
    assert torch.equal(x, x_before)  # the in-place addition writes into the block's own intermediate only
    assert out.dtype == expected.dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    with torch.inference_mode():
        torch.testing.assert_close(blk(x), expected, rtol=0, atol=1e-6)


def test_no_grad_path_is_used_and_grad_path_is_unfused():
    blk = _block().eval()
    calls = []
    original = blk._forward_no_grad
    blk._forward_no_grad = lambda t: calls.append(1) or original(t)
    x = torch.randn(2, 5, 16, requires_grad=True)
    out = blk(x)
    assert calls == []
    assert torch.equal(out, _formula(blk, x))  # training numerics are untouched, bit for bit
    with torch.no_grad():
        fused = blk(x)
    assert calls == [1]
    torch.testing.assert_close(fused, out.detach(), rtol=0, atol=1e-6)


def test_grad_path_gradients_match_formula():
    blk = _block()
    x = torch.randn(2, 5, 16, requires_grad=True)
    grads = torch.autograd.grad(blk(x).square().sum(), [x, blk.ls1.gamma, blk.ls2.gamma])
    expected = torch.autograd.grad(_formula(blk, x).square().sum(), [x, blk.ls1.gamma, blk.ls2.gamma])
    for grad, ref in zip(grads, expected):
        assert torch.equal(grad, ref)


def test_no_grad_path_under_bf16_autocast_keeps_fp32_stream():
    blk = Block(64, num_heads=4, qkv_bias=True, init_values=0.5).eval()
    x = torch.randn(2, 9, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _formula(blk, x)
        out = blk(x)
    assert out.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("with_layer_scale", [True, False])
def test_add_scaled_residual_in_place_only_when_dtype_is_kept(with_layer_scale):
    layer_scale = LayerScale(4, init_values=0.5) if with_layer_scale else nn.Identity()
    residual = torch.randn(2, 3, 4)
    expected = torch.ones(2, 3, 4) + layer_scale(residual)
    with torch.no_grad():
        x = torch.ones(2, 3, 4)
        out = _add_scaled_residual(x, residual, layer_scale, inplace=True)
        assert out is x and torch.equal(out, expected)
        x_bf16 = torch.ones(2, 3, 4, dtype=torch.bfloat16)
        out = _add_scaled_residual(x_bf16, residual, layer_scale, inplace=True)  # fp32 result: no write into bf16
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert torch.equal(x_bf16, torch.ones(2, 3, 4, dtype=torch.bfloat16))


def test_scratch_receives_the_result_and_the_exact_upcast():
    layer_scale = LayerScale(4, init_values=0.5)
    x = torch.randn(2, 3, 4)
    residual = torch.randn(2, 3, 4).bfloat16()
    with torch.no_grad():
        expected = _add_scaled_residual(x, residual, layer_scale, inplace=False)
        scratch = torch.empty(2, 3, 4)
        out = _add_scaled_residual(x, residual, layer_scale, inplace=False, scratch=scratch)
        assert out is scratch and torch.equal(out, expected)
        y = x.clone()
        out = _add_scaled_residual(y, residual, layer_scale, inplace=True, scratch=torch.empty(2, 3, 4))
        assert out is y and torch.equal(out, expected)
        wrong_shape = torch.empty(3, 4)
        out = _add_scaled_residual(x, residual, layer_scale, inplace=False, scratch=wrong_shape)
    assert out is not wrong_shape and torch.equal(out, expected)


def test_no_grad_path_with_a_norm_that_returns_its_input():
    """Only a plain LayerNorm's output is used as scratch; an identity norm would alias the block input."""
    blk = Block(16, num_heads=2, init_values=0.3, norm_layer=lambda dim, **kwargs: nn.Identity()).eval()
    x = torch.randn(2, 5, 16)
    x_before = x.clone()
    with torch.no_grad():
        out = blk(x)
    assert torch.equal(x, x_before)
    torch.testing.assert_close(out, _formula(blk, x_before), rtol=0, atol=1e-6)
