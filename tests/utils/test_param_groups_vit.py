"""Parameter groups of the real ViT-S/14 and DINOHead (spec 6.7: 28 fused backbone groups, verified multipliers)."""

import pytest
import torch

from dinov2.layers import DINOHead
from dinov2.models.vision_transformer import vit_small
from dinov2.utils.param_groups import fuse_params_groups, get_params_groups_with_decay


def _groups(model: torch.nn.Module) -> list[dict]:
    return get_params_groups_with_decay(model, lr_decay_rate=0.9, patch_embed_lr_mult=0.2)


@pytest.mark.parametrize("block_chunks", [0, 4])
def test_vit_small_groups(block_chunks: int) -> None:
    with torch.device("meta"):  # names and shapes only; nothing to compute
        model = vit_small(patch_size=14, img_size=224, init_values=1e-5, block_chunks=block_chunks)  # as in training
    groups = {g["name"]: g for g in _groups(model)}
    block0 = "blocks.0.0." if block_chunks else "blocks.0."
    block10 = "blocks.3.10." if block_chunks else "blocks.10."
    block11 = "blocks.3.11." if block_chunks else "blocks.11."
    for name in ("cls_token", "pos_embed", "mask_token"):
        assert groups[name]["lr_multiplier"] == pytest.approx(0.25419, abs=1e-5)
        assert groups[name]["wd_multiplier"] == 1.0
    assert groups["patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(0.05084, abs=1e-5)
    assert groups[block0 + "attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.28243, abs=1e-5)
    assert groups[block10 + "mlp.fc1.weight"]["lr_multiplier"] == pytest.approx(0.81)
    assert groups[block11 + "attn.proj.weight"]["lr_multiplier"] == pytest.approx(0.9)
    assert groups[block11 + "ls1.gamma"]["wd_multiplier"] == 0.0
    assert groups["norm.weight"]["lr_multiplier"] == 1.0 and groups["norm.weight"]["wd_multiplier"] == 0.0
    fused = fuse_params_groups(groups.values())
    assert len(fused) == 28
    assert sum(len(g["params"]) for g in fused) == len(list(model.parameters()))


def test_dino_head_groups() -> None:
    with torch.device("meta"):
        head = DINOHead(in_dim=384, out_dim=64, hidden_dim=32, bottleneck_dim=16)
    groups = {g["name"]: g for g in _groups(head)}
    last = [n for n, g in groups.items() if g["is_last_layer"]]
    assert sorted(last) == ["last_layer.weight_g", "last_layer.weight_v"]
    assert all(g["lr_multiplier"] == 1.0 for g in groups.values())
    assert len(fuse_params_groups(groups.values())) == 3  # weights, biases (no wd), last layer
