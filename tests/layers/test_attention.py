import subprocess
import sys

import pytest
import torch

from dinov2.layers import Attention, MemEffAttention
from dinov2.layers.config import xformers_available


def _explicit_attention(attn: Attention, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Textbook multi-head attention written from the layer's weights, independent of the layer's code."""
    B, N, C = x.shape
    H = attn.num_heads
    d = C // H
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias  # [B, N, 3C]
    q, k, v = qkv.split(C, dim=-1)
    q, k, v = (t.reshape(B, N, H, d).transpose(1, 2) for t in (q, k, v))  # [B, H, N, d]
    logits = q @ k.transpose(-1, -2) / d**0.5  # [B, H, N, N]
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    out = logits.softmax(-1) @ v  # [B, H, N, d]
    out = out.transpose(1, 2).reshape(B, N, C)
    return out @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("cls", [Attention, MemEffAttention])
def test_sdpa_matches_explicit_math(cls, device):
    attn = cls(32, num_heads=4, qkv_bias=True).to(device).eval()
    x = torch.randn(3, 17, 32, device=device)
    fused = attn(x)
    attn.fused_attn = False
    unfused = attn(x)
    reference = _explicit_attention(attn, x)
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unfused, reference, atol=1e-5, rtol=1e-5)


def test_attention_map_rows_sum_to_one_and_reproduce_output():
    attn = Attention(32, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(2, 9, 32)
    amap = attn.get_attention_map(x)
    assert amap.shape == (2, 4, 9, 9)
    torch.testing.assert_close(amap.sum(-1), torch.ones(2, 4, 9))
    _, _, v = attn._qkv(x)
    out = (amap @ v).transpose(1, 2).reshape(2, 9, 32)
    torch.testing.assert_close(attn.proj(out), attn(x), atol=1e-5, rtol=1e-5)


def test_memeff_tensor_mask_matches_explicit_math():
    attn = MemEffAttention(16, num_heads=2, qkv_bias=True).eval()
    x = torch.randn(2, 6, 16)
    mask = torch.ones(6, 6, dtype=torch.bool)
    mask[:3, 3:] = False
    mask[3:, :3] = False  # two independent groups of tokens
    torch.testing.assert_close(attn(x, attn_bias=mask), _explicit_attention(attn, x, mask), atol=1e-5, rtol=1e-5)
    # the block-diagonal mask makes each half independent of the other
    torch.testing.assert_close(attn(x, attn_bias=mask)[:, :3], attn(x[:, :3]), atol=1e-5, rtol=1e-5)


def test_memeff_rejects_xformers_bias_without_cuda():
    attn = MemEffAttention(16, num_heads=2)
    with pytest.raises(TypeError, match="needs xFormers and CUDA"):
        attn(torch.randn(1, 4, 16), attn_bias=object())


def test_bad_head_count():
    with pytest.raises(ValueError, match="divisible"):
        Attention(30, num_heads=4)


def test_xformers_disabled_env(monkeypatch):
    monkeypatch.setenv("XFORMERS_DISABLED", "1")
    assert xformers_available() is False


def test_import_has_no_side_effects():
    code = "import dinov2.layers, dinov2.models, dinov2.hub.backbones, hubconf"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, cwd=str(_repo_root())
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]
