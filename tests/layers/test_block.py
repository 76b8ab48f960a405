import pytest
import torch
from torch import nn

from dinov2.layers import Block, DropPath, NestedTensorBlock
from dinov2.layers.block import drop_add_residual_stochastic_depth
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
