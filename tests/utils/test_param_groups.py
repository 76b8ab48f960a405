"""Parameter groups on stand-in modules that carry the reference's parameter names (ViT-S depth, tiny widths)."""

import pytest
import torch
from torch import nn

from dinov2.utils.param_groups import fuse_params_groups, get_params_groups_with_decay, get_vit_lr_decay_rate

DEPTH = 12


class _Block(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(d, 3 * d)
        self.attn.proj = nn.Linear(d, d)
        self.ls1 = nn.Module()
        self.ls1.gamma = nn.Parameter(torch.ones(d))
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(d, 2 * d)
        self.mlp.fc2 = nn.Linear(2 * d, d)
        self.ls2 = nn.Module()
        self.ls2.gamma = nn.Parameter(torch.ones(d))


class _TinyViT(nn.Module):
    """Names as DinoVisionTransformer: flat ``blocks.<i>`` or chunked ``blocks.<c>.<i>`` with the global index."""

    def __init__(self, chunks: int = 0, registers: int = 0, d: int = 4) -> None:
        super().__init__()
        self.n_blocks = DEPTH
        self.chunked_blocks = chunks > 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        if registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, registers, d))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, 2, 2)
        blocks = [_Block(d) for _ in range(DEPTH)]
        if chunks:
            per_chunk = DEPTH // chunks
            self.blocks = nn.ModuleList(
                nn.ModuleList([nn.Identity()] * (c * per_chunk) + blocks[c * per_chunk : (c + 1) * per_chunk])
                for c in range(chunks)
            )
        else:
            self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(d)


class _TinyHead(nn.Module):
    """Names as DINOHead: ``mlp.<k>`` linears and a weight-normalised ``last_layer`` (weight_g, weight_v)."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, 8), nn.GELU(), nn.Linear(8, 3))
        self.last_layer = nn.Module()
        self.last_layer.weight_g = nn.Parameter(torch.ones(6, 1))
        self.last_layer.weight_v = nn.Parameter(torch.randn(6, 3))


def _by_name(groups: list[dict]) -> dict[str, dict]:
    return {g["name"]: g for g in groups}


@pytest.mark.parametrize("chunks", [0, 4])
def test_vit_s_multipliers_match_the_verified_example(chunks: int) -> None:
    groups = _by_name(get_params_groups_with_decay(_TinyViT(chunks), lr_decay_rate=0.9, patch_embed_lr_mult=0.2))
    prefix = "blocks.{}." if not chunks else "blocks.{c}.{}."

    def block(i: int, rest: str) -> str:
        return prefix.format(i, c=i // (DEPTH // 4)) + rest

    # spec 6.7: cls/pos/mask 0.25419 (0.9^13); patch_embed 0.05084; block 0 0.28243; block 10 0.81; block 11 0.9
    for name in ("cls_token", "pos_embed", "mask_token"):
        assert groups[name]["lr_multiplier"] == pytest.approx(0.25419, abs=1e-5)
        assert groups[name]["wd_multiplier"] == 1.0  # the tokens DO get weight decay in the reference
    assert groups["patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(0.05084, abs=1e-5)
    assert groups["patch_embed.proj.weight"]["wd_multiplier"] == 1.0
    assert groups["patch_embed.proj.bias"]["wd_multiplier"] == 0.0
    assert groups[block(0, "attn.qkv.weight")]["lr_multiplier"] == pytest.approx(0.28243, abs=1e-5)
    assert groups[block(10, "mlp.fc1.weight")]["lr_multiplier"] == pytest.approx(0.81)
    assert groups[block(11, "ls2.gamma")]["lr_multiplier"] == pytest.approx(0.9)
    assert groups["norm.weight"]["lr_multiplier"] == 1.0
    for rest, wd in [("attn.qkv.weight", 1.0), ("attn.qkv.bias", 0.0), ("norm1.weight", 0.0), ("ls1.gamma", 0.0)]:
        assert groups[block(5, rest)]["wd_multiplier"] == wd
    assert not any(g["is_last_layer"] for g in groups.values())


def test_vit_s_fuses_into_28_groups() -> None:
    model = _TinyViT()
    fused = fuse_params_groups(get_params_groups_with_decay(model, lr_decay_rate=0.9, patch_embed_lr_mult=0.2))
    assert len(fused) == 28  # 3 embedding groups + 2 per block + final norm
    assert sum(len(g["params"]) for g in fused) == len(list(model.parameters()))
    assert all(set(g) == {"params", "lr_multiplier", "wd_multiplier", "is_last_layer"} for g in fused)
    ids = [id(p) for g in fused for p in g["params"]]
    assert len(set(ids)) == len(ids)


def test_registers_are_embeddings_and_frozen_params_are_skipped() -> None:
    model = _TinyViT(registers=4)
    model.mask_token.requires_grad_(False)
    groups = _by_name(get_params_groups_with_decay(model, lr_decay_rate=0.5))
    assert groups["register_tokens"]["lr_multiplier"] == pytest.approx(0.5**13)
    assert "mask_token" not in groups


def test_head_groups() -> None:
    groups = _by_name(get_params_groups_with_decay(_TinyHead(), lr_decay_rate=0.9, patch_embed_lr_mult=0.2))
    assert all(g["lr_multiplier"] == 1.0 for g in groups.values())  # no blocks: no layer decay
    assert groups["last_layer.weight_g"]["is_last_layer"] and groups["last_layer.weight_v"]["is_last_layer"]
    assert groups["last_layer.weight_g"]["wd_multiplier"] == 1.0
    assert groups["mlp.0.bias"]["wd_multiplier"] == 0.0 and not groups["mlp.0.weight"]["is_last_layer"]
    assert len(fuse_params_groups(groups.values())) == 3


def test_get_vit_lr_decay_rate_names() -> None:
    assert get_vit_lr_decay_rate("backbone.blocks.3.attn.qkv.weight", 0.9, 12) == pytest.approx(0.9**9)
    assert get_vit_lr_decay_rate("backbone.pos_embed", 0.9, 12) == pytest.approx(0.9**13)
    assert get_vit_lr_decay_rate("backbone.norm.weight", 0.9, 12) == 1.0
    assert get_vit_lr_decay_rate("blocks.3.attn.qkv.weight", 0.9, 12) == 1.0  # not a backbone name, not forced
    name = "blocks.1.4.mlp.fc1.weight"  # chunk 1, global block 4
    assert get_vit_lr_decay_rate(name, 0.9, 12, force_is_backbone=True, chunked_blocks=True) == pytest.approx(0.9**8)


def test_fsdp_prefixes_are_ignored() -> None:
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._fsdp_wrapped_module = _TinyHead()

    groups = get_params_groups_with_decay(Wrapped())
    assert {g["name"] for g in groups} == {n for n, _ in _TinyHead().named_parameters()}
