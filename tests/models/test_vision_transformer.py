import math
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dinov2.models import build_model, build_model_from_cfg
from dinov2.models import vision_transformer as vits
from dinov2.models.checkpoint_filter import checkpoint_filter_fn


def tiny_vit(**kwargs) -> vits.DinoVisionTransformer:
    """4 blocks, D=32, patch 4, pos_embed for a 6x6 grid: fast, and big enough to exercise every path."""
    args = dict(
        img_size=24, patch_size=4, embed_dim=32, depth=4, num_heads=2, init_values=1e-1, block_chunks=0,
        block_fn=vits.partial(vits.NestedTensorBlock, attn_class=vits.MemEffAttention),
    )  # fmt: skip
    args.update(kwargs)
    return vits.DinoVisionTransformer(**args).eval()


def _manual_blocks(model, x):
    """Token sequence after each block, walking the blocks by hand."""
    x = model.prepare_tokens_with_masks(x)
    outs = []
    for _, blk in model._iter_blocks():
        x = blk(x)
        outs.append(x)
    return outs


# ---------------------------------------------------------------- position-embedding interpolation


def _grid(model):
    pos = model.pos_embed.detach()[:, 1:].float()
    M = int(math.sqrt(pos.shape[1]))
    return pos.reshape(1, M, M, -1).permute(0, 3, 1, 2), M


@pytest.mark.parametrize(("H", "W"), [(16, 16), (16, 32), (40, 28)])
def test_interpolation_offset_uses_scale_factors(H, W):
    model = tiny_vit(interpolate_offset=0.1)
    tokens = torch.zeros(1, 1 + (H // 4) * (W // 4), 32)
    grid, M = _grid(model)
    expected = F.interpolate(grid, scale_factor=((H // 4 + 0.1) / M, (W // 4 + 0.1) / M), mode="bicubic")
    expected = expected.permute(0, 2, 3, 1).reshape(1, -1, 32)
    out = model.interpolate_pos_encoding(tokens, H, W)
    torch.testing.assert_close(out[:, 0], model.pos_embed[:, 0])
    torch.testing.assert_close(out[:, 1:], expected)
    by_size = F.interpolate(grid, size=(H // 4, W // 4), mode="bicubic").permute(0, 2, 3, 1).reshape(1, -1, 32)
    assert not torch.allclose(out[:, 1:], by_size, atol=1e-4)  # the two paths really differ


@pytest.mark.parametrize("antialias", [False, True])
def test_interpolation_zero_offset_uses_size(antialias):
    model = tiny_vit(interpolate_offset=0.0, interpolate_antialias=antialias)
    tokens = torch.zeros(1, 1 + 4 * 3, 32, dtype=torch.bfloat16)
    grid, _ = _grid(model)
    expected = F.interpolate(grid, size=(4, 3), mode="bicubic", antialias=antialias)
    expected = expected.permute(0, 2, 3, 1).reshape(1, -1, 32)
    out = model.interpolate_pos_encoding(tokens, 16, 12)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out[:, 1:], expected.to(torch.bfloat16))


def test_interpolation_shortcut_returns_pos_embed():
    model = tiny_vit()
    tokens = torch.zeros(2, 1 + 36, 32)
    assert model.interpolate_pos_encoding(tokens, 24, 24) is model.pos_embed


# ---------------------------------------------------------------- tokens, registers, masks


def test_register_layout_and_no_pos_embed_on_registers():
    model = tiny_vit(num_register_tokens=3)
    with torch.no_grad():
        model.register_tokens.normal_()
    x = torch.randn(2, 3, 24, 24)
    tokens = model.prepare_tokens_with_masks(x)
    assert tokens.shape == (2, 1 + 3 + 36, 32)
    torch.testing.assert_close(tokens[:, 0], (model.cls_token + model.pos_embed[:, :1]).expand(2, -1, -1)[:, 0])
    torch.testing.assert_close(tokens[:, 1:4], model.register_tokens.expand(2, -1, -1))
    torch.testing.assert_close(tokens[:, 4:], model.patch_embed(x) + model.pos_embed[:, 1:])


def test_masks_replace_patches_with_mask_token():
    model = tiny_vit()
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(2, 3, 24, 24)
    masks = torch.zeros(2, 36, dtype=torch.bool)
    masks[0, [0, 5, 35]] = True
    tokens = model.prepare_tokens_with_masks(x, masks)[:, 1:]
    plain = model.patch_embed(x) + model.pos_embed[:, 1:]
    masked_value = (model.mask_token + model.pos_embed[:, 1:])[0]  # [36, D]
    torch.testing.assert_close(tokens[0, masks[0]], masked_value[masks[0]])
    torch.testing.assert_close(tokens[~masks], plain[~masks])


def test_forward_features_keys_and_forward():
    model = tiny_vit(num_register_tokens=2)
    x = torch.randn(2, 3, 24, 20)
    feats = model.forward_features(x)
    assert set(feats) == {"x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm", "masks"}
    assert feats["x_norm_clstoken"].shape == (2, 32)
    assert feats["x_norm_regtokens"].shape == (2, 2, 32)
    assert feats["x_norm_patchtokens"].shape == (2, 30, 32)
    assert feats["x_prenorm"].shape == (2, 33, 32)
    torch.testing.assert_close(model.norm(feats["x_prenorm"])[:, 3:], feats["x_norm_patchtokens"])
    torch.testing.assert_close(model(x), feats["x_norm_clstoken"])
    assert model(x, is_training=True).keys() == feats.keys()


def test_list_input_equals_separate_calls():
    model = tiny_vit(num_register_tokens=1)
    xs = [torch.randn(2, 3, 24, 24), torch.randn(3, 3, 8, 12)]
    masks = [torch.rand(2, 36) > 0.5, None]
    outs = model.forward_features(xs, masks)
    for x, m, out in zip(xs, masks, outs):
        single = model.forward_features(x, m)
        for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
            torch.testing.assert_close(out[key], single[key])


# ---------------------------------------------------------------- get_intermediate_layers


@pytest.mark.parametrize("block_chunks", [0, 2])
def test_intermediate_layers_int_and_list(block_chunks):
    model = tiny_vit(block_chunks=block_chunks, num_register_tokens=2)
    x = torch.randn(2, 3, 16, 24)
    per_block = _manual_blocks(model, x)
    last_two = model.get_intermediate_layers(x, n=2, norm=False)
    assert len(last_two) == 2
    torch.testing.assert_close(last_two[0], per_block[2][:, 3:])
    torch.testing.assert_close(last_two[1], per_block[3][:, 3:])
    picked = model.get_intermediate_layers(x, n=[0, 2], norm=True)
    torch.testing.assert_close(picked[0], model.norm(per_block[0])[:, 3:])
    torch.testing.assert_close(picked[1], model.norm(per_block[2])[:, 3:])


def test_no_grad_outputs_match_grad_mode():
    """Without autograd the blocks fuse LayerScale into the residual and add in place: same outputs (within FMA
    rounding), and the intermediate outputs already handed out are not overwritten by later blocks."""
    model = tiny_vit(num_register_tokens=1)
    x = torch.randn(2, 3, 24, 24)
    with_grad = model.get_intermediate_layers(x, n=4, norm=False)
    features = model.forward_features(x)
    with torch.inference_mode():
        no_grad = model.get_intermediate_layers(x, n=4, norm=False)
        no_grad_features = model.forward_features(x)
    for out, ref in zip(no_grad, with_grad):
        torch.testing.assert_close(out, ref.detach(), rtol=0, atol=1e-6)
    for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"):
        torch.testing.assert_close(no_grad_features[key], features[key].detach(), rtol=0, atol=1e-6)


def test_intermediate_layers_reshape_class_and_register_tokens():
    model = tiny_vit(num_register_tokens=2)
    x = torch.randn(2, 3, 16, 24)
    last = model.norm(_manual_blocks(model, x)[-1])
    (patches, cls), = model.get_intermediate_layers(x, n=1, reshape=True, return_class_token=True)  # fmt: skip
    assert patches.shape == (2, 32, 4, 6) and patches.is_contiguous()
    torch.testing.assert_close(patches[:, :, 1, 2], last[:, 3 + 1 * 6 + 2])  # row-major patch grid
    torch.testing.assert_close(cls, last[:, 0])
    (patches2, regs), = model.get_intermediate_layers(x, n=1, return_register_tokens=True)  # fmt: skip
    torch.testing.assert_close(regs, last[:, 1:3])
    assert patches2.shape == (2, 24, 32)
    ((_, cls3, regs3),) = model.get_intermediate_layers(  # fmt: skip
        x, n=1, return_class_token=True, return_register_tokens=True
    )
    torch.testing.assert_close(cls3, cls)
    torch.testing.assert_close(regs3, regs)


def test_intermediate_layers_bad_indices():
    model = tiny_vit()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="out of range"):
        model.get_intermediate_layers(x, n=[4])
    with pytest.raises(ValueError, match="between 1 and"):
        model.get_intermediate_layers(x, n=5)


# ---------------------------------------------------------------- chunked vs flat


def test_chunked_keys_and_outputs_match_flat_after_conversion():
    chunked = tiny_vit(block_chunks=2, num_register_tokens=1)
    keys = [k for k in chunked.state_dict() if k.endswith("norm1.weight")]
    assert keys == [f"blocks.{i // 2}.{i}.norm1.weight" for i in range(4)]
    flat = tiny_vit(block_chunks=0, num_register_tokens=1)
    flat.load_state_dict(checkpoint_filter_fn(chunked.state_dict(), flat), strict=True)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(flat(x), chunked(x))
    torch.testing.assert_close(
        flat.get_intermediate_layers(x, n=[1, 3])[0], chunked.get_intermediate_layers(x, n=[1, 3])[0]
    )
    back = tiny_vit(block_chunks=4, num_register_tokens=1)  # flat -> a different chunking
    back.load_state_dict(checkpoint_filter_fn(flat.state_dict(), back), strict=True)
    torch.testing.assert_close(back(x), flat(x))


# ---------------------------------------------------------------- input sizes, attention maps


def test_non_multiple_input_is_cropped_top_left_with_one_warning():
    model = tiny_vit()
    x = torch.randn(1, 3, 18, 23)
    with pytest.warns(UserWarning, match="cropping to 16x20") as record:
        out = model(x)
        model(x)
    assert len([w for w in record if "cropping" in str(w.message)]) == 1
    torch.testing.assert_close(out, model(x[..., :16, :20]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(1, 3, 16, 20))  # exact multiples: no warning


def test_input_smaller_than_a_patch():
    with pytest.raises(ValueError, match="smaller than one 4x4 patch"):
        tiny_vit()(torch.randn(1, 3, 3, 8))


@pytest.mark.parametrize("block_chunks", [0, 2])
def test_last_selfattention(block_chunks):
    model = tiny_vit(num_register_tokens=2, block_chunks=block_chunks)
    x = torch.randn(2, 3, 16, 12)
    attn = model.get_last_selfattention(x)
    assert attn.shape == (2, 2, 1 + 2 + 12, 1 + 2 + 12)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 15))
    before_last = _manual_blocks(model, x)[-2]
    last = list(model._iter_blocks())[-1][1]
    _, _, v = last.attn._qkv(last.norm1(before_last))
    out = last.attn.proj((attn @ v).transpose(1, 2).reshape(2, 15, 32))
    torch.testing.assert_close(out, last.attn(last.norm1(before_last)), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- construction and init


def test_meta_build_then_init_weights_fills_everything():
    with torch.device("meta"):
        model = tiny_vit(num_register_tokens=2, block_chunks=2, init_values=0.25, ffn_layer="swiglufused")
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.init_weights()
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
    assert torch.equal(model.mask_token, torch.zeros_like(model.mask_token))
    for _, blk in model._iter_blocks():
        assert torch.equal(blk.ls1.gamma, torch.full((32,), 0.25))
        assert torch.equal(blk.norm1.weight, torch.ones(32)) and torch.equal(blk.norm1.bias, torch.zeros(32))
        assert torch.equal(blk.attn.qkv.bias, torch.zeros(96))
    assert model.cls_token.abs().max() < 1e-4
    assert abs(model.pos_embed.std().item() - 0.02) < 0.004


def test_device_kwarg_builds_on_meta():
    model = vits.vit_tiny(patch_size=14, device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert model.embed_dim == 192 and model.n_blocks == 12 and model.num_heads == 3


def test_unknown_ffn_layer():
    with pytest.raises(ValueError, match="unknown ffn_layer"):
        tiny_vit(ffn_layer="conv")


def test_drop_path_schedule():
    model = tiny_vit(drop_path_rate=0.3)
    rates = [blk.sample_drop_ratio for _, blk in model._iter_blocks()]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 4))
    uniform = tiny_vit(drop_path_rate=0.3, drop_path_uniform=True)
    assert [blk.sample_drop_ratio for _, blk in uniform._iter_blocks()] == [0.3] * 4


def _student_args(**overrides):
    args = dict(
        arch="vit_tiny", patch_size=16, drop_path_rate=0.2, layerscale=1e-5, drop_path_uniform=True,
        pretrained_weights="", ffn_layer="mlp", block_chunks=0, qkv_bias=True, proj_bias=True, ffn_bias=True,
        num_register_tokens=0, interpolate_offset=0.1, interpolate_antialias=False,
    )  # fmt: skip
    args.update(overrides)
    return SimpleNamespace(**args)


def test_build_model():
    args = _student_args(arch="vit_tiny_memeff", num_register_tokens=2)
    student, teacher, embed_dim = build_model(args, img_size=32)
    assert args.arch == "vit_tiny_memeff"  # not mutated
    assert embed_dim == 192
    assert student.pos_embed.shape == (1, 5, 192) and student.register_tokens.shape == (1, 2, 192)
    assert [b.sample_drop_ratio for b in student.blocks] == [0.2] * 12
    assert [b.sample_drop_ratio for b in teacher.blocks] == [0.0] * 12
    assert student.blocks[0].ls1.gamma[0].item() == pytest.approx(1e-5)
    teacher_only, dim = build_model(args, only_teacher=True, img_size=32)
    assert dim == 192 and teacher_only.state_dict().keys() == teacher.state_dict().keys()
    cfg = SimpleNamespace(student=args, crops=SimpleNamespace(global_crops_size=48))
    assert build_model_from_cfg(cfg, only_teacher=True)[0].pos_embed.shape == (1, 10, 192)


def test_build_model_unknown_arch():
    with pytest.raises(ValueError, match="unknown student.arch='resnet50'"):
        build_model(_student_args(arch="resnet50"))
