import math

import numpy as np
import pytest
import torch

import dinov2.hub.depthers as depthers
from dinov2.hub._heads import extract_head_state_dict
from dinov2.hub.depth import BNHead, DepthEncoderDecoder, DPTHead
from dinov2.hub.depth.ops import center_pad
from dinov2.hub.depthers import (
    Weights,
    _get_depth_range,
    _make_dinov2_dpt_depth_head,
    _make_dinov2_linear_depth_head,
)
from tests.hub.heads_standin import (
    TinyBackbone,
    assert_state_dict_equal,
    perturbed_state_dict,
    prefixed_shapes,
    released_backbone_shapes,
    write_backbone_checkpoint,
)

DIMS = {"s": 384, "b": 768, "l": 1024, "g": 1536}


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _expected_dpt_keys(D: int) -> dict[str, list[int]]:
    """decode_head.* keys and shapes of the released DPT heads, written from the spec (section 3.7)."""
    c = [D // 8, D // 4, D // 2, D]
    keys: dict[str, list[int]] = {}
    for i in range(4):
        keys[f"reassemble_blocks.projects.{i}.conv.weight"] = [c[i], D, 1, 1]
        keys[f"reassemble_blocks.projects.{i}.conv.bias"] = [c[i]]
    for i, k in ((0, 4), (1, 2), (3, 3)):
        keys[f"reassemble_blocks.resize_layers.{i}.weight"] = [c[i], c[i], k, k]
        keys[f"reassemble_blocks.resize_layers.{i}.bias"] = [c[i]]
    for i in range(4):
        keys[f"reassemble_blocks.readout_projects.{i}.0.weight"] = [D, 2 * D]
        keys[f"reassemble_blocks.readout_projects.{i}.0.bias"] = [D]
        keys[f"convs.{i}.conv.weight"] = [256, c[i], 3, 3]
        keys[f"fusion_blocks.{i}.project.conv.weight"] = [256, 256, 1, 1]
        keys[f"fusion_blocks.{i}.project.conv.bias"] = [256]
        for unit in (1, 2) if i > 0 else (2,):
            for conv in (1, 2):
                keys[f"fusion_blocks.{i}.res_conv_unit{unit}.conv{conv}.conv.weight"] = [256, 256, 3, 3]
    keys["project.conv.weight"] = [256, 256, 3, 3]
    keys["project.conv.bias"] = [256]
    for idx, shape in ((0, [128, 256, 3, 3]), (2, [32, 128, 3, 3]), (4, [1, 32, 1, 1])):
        keys[f"conv_depth.head.{idx}.weight"] = shape
        keys[f"conv_depth.head.{idx}.bias"] = [shape[0]]
    return keys


@pytest.mark.parametrize("size", sorted(DIMS))
def test_dpt_head_keys_and_shapes_match_the_released_layout(size):
    D = DIMS[size]
    head = _make_dinov2_dpt_depth_head(embed_dim=D, min_depth=0.001, max_depth=10.0)
    expected = _expected_dpt_keys(D)
    assert _shapes(head) == expected
    if size == "s":
        assert len(expected) == 56  # the spec's verified count for ViT-S


@pytest.mark.parametrize("size", sorted(DIMS))
@pytest.mark.parametrize("layers", [1, 4])
def test_linear_depth_head_keys_and_shapes(size, layers):
    D = DIMS[size]
    head = _make_dinov2_linear_depth_head(embed_dim=D, layers=layers, min_depth=0.001, max_depth=10.0)
    C = 2 * D * layers
    assert _shapes(head) == {"conv_depth.weight": [256, C, 1, 1], "conv_depth.bias": [256]}
    if size == "s":
        assert C == {4: 3072, 1: 768}[layers]


def test_depth_range_follows_the_weights():
    assert _get_depth_range(True, Weights.NYU) == (0.001, 10.0)
    assert _get_depth_range(True, "KITTI") == (0.001, 80.0)
    assert _get_depth_range(True, "kitti") == (0.001, 80.0)
    assert _get_depth_range(False, "KITTI") == (0.001, 10.0)
    with pytest.raises(ValueError, match="Unsupported weights 'NYUv2'"):
        _get_depth_range(True, "NYUv2")


def test_linear_bins_expectation_matches_hand_computation():
    head = BNHead(
        classify=True, n_bins=4, in_channels=[2], in_index=[0], channels=2, min_depth=1.0, max_depth=4.0, upsample=1
    )
    with torch.no_grad():
        head.conv_depth.weight.zero_()
        head.conv_depth.bias.copy_(torch.tensor([-1.0, 0.0, 0.4, 0.9]))
    depth = head.depth_pred(torch.randn(1, 2, 3, 5))
    # "linear" normalisation: relu(logit) + 0.1, divided by the sum; bins 1, 2, 3, 4 (UD)
    w = np.array([0.1, 0.1, 0.5, 1.0])
    expected = float((w / w.sum()) @ np.array([1.0, 2.0, 3.0, 4.0]))
    assert depth.shape == (1, 1, 3, 5)
    torch.testing.assert_close(depth, torch.full((1, 1, 3, 5), expected))


def test_sid_bins_are_log_spaced_depths():
    head = BNHead(classify=True, n_bins=3, in_channels=[2], in_index=[0], channels=2, min_depth=0.01, max_depth=100.0)
    bins = head._bins(torch.zeros(1))
    bins_strategy = head.bins_strategy
    assert bins_strategy == "UD"  # the default
    head.bins_strategy = "SID"
    torch.testing.assert_close(head._bins(torch.zeros(1)), torch.tensor([0.01, 1.0, 100.0]))
    torch.testing.assert_close(bins, torch.tensor([0.01, 50.005, 100.0]))


def test_regression_depth_is_relu_plus_min_depth():
    head = DPTHead(
        in_channels=[32] * 4, channels=16, embed_dims=32, post_process_channels=[4, 8, 16, 32], min_depth=0.5
    )
    feat = torch.randn(2, 16, 4, 4)
    raw = head.conv_depth(feat)
    torch.testing.assert_close(head.depth_pred(feat), torch.relu(raw) + 0.5)


@pytest.mark.parametrize("kind", ["linear4", "linear1", "dpt"])
def test_head_output_resolution_relative_to_the_patch_grid(kind):
    D = 32
    backbone = TinyBackbone(embed_dim=D)
    x = torch.randn(1, 3, 56, 84)  # 4 x 6 patches (even grid: the stride-2 level divides it exactly)
    if kind == "dpt":
        head = _make_dinov2_dpt_depth_head(embed_dim=D, min_depth=0.001, max_depth=10.0)
        feats = backbone.get_intermediate_layers(x, n=[2, 5, 8, 11], reshape=True, return_class_token=True, norm=False)
        expected = (64, 96)  # 16 x the grid (spec: 224 input -> [1, 1, 256, 256])
    else:
        layers = int(kind[-1])
        head = _make_dinov2_linear_depth_head(embed_dim=D, layers=layers, min_depth=0.001, max_depth=10.0)
        n = [2, 5, 8, 11] if layers == 4 else [11]
        feats = backbone.get_intermediate_layers(x, n=n, reshape=True, return_class_token=True, norm=False)
        expected = (16, 24)  # 4 x the grid (spec: 224 input -> [1, 1, 64, 64])
    assert head(feats).shape == (1, 1, *expected)


@pytest.mark.parametrize("kind", ["linear", "dpt"])
@pytest.mark.parametrize("hw", [(30, 45), (28, 28), (15, 57)])
def test_depther_output_at_input_size_for_any_image_size(kind, hw):
    D = 32
    backbone = TinyBackbone(embed_dim=D)
    if kind == "dpt":
        head = _make_dinov2_dpt_depth_head(embed_dim=D, min_depth=0.001, max_depth=10.0)
    else:
        head = _make_dinov2_linear_depth_head(embed_dim=D, layers=4, min_depth=0.001, max_depth=10.0)
    model = DepthEncoderDecoder(backbone, head, out_index=[2, 5, 8, 11], patch_size=14).eval()
    with torch.inference_mode():
        depth = model(torch.randn(2, 3, *hw))
    assert depth.shape == (2, 1, *hw)
    padded = [math.ceil(s / 14) * 14 for s in hw]
    assert backbone.input_shapes == [(2, 3, *padded)]
    assert depth.min() >= 0.001 - 1e-6 and depth.max() <= 10.0 + 1e-6


def test_depther_clamps_to_the_head_range():
    D = 16
    head = _make_dinov2_linear_depth_head(embed_dim=D, layers=1, min_depth=0.001, max_depth=10.0)
    with torch.no_grad():  # all the mass on the last bin -> expectation close to max_depth, never above
        head.conv_depth.weight.zero_()
        head.conv_depth.bias.fill_(-1.0)
        head.conv_depth.bias[-1] = 1e6
    model = DepthEncoderDecoder(TinyBackbone(embed_dim=D), head, out_index=[11], patch_size=14)
    depth = model.whole_inference(torch.randn(1, 3, 28, 42), img_meta=None, rescale=True)
    assert depth.shape == (1, 1, 28, 42)
    assert torch.all(depth <= 10.0) and torch.all(depth > 9.99)


def test_slide_inference_covers_the_image_and_matches_whole_inference_for_one_window():
    D = 16
    head = _make_dinov2_linear_depth_head(embed_dim=D, layers=4, min_depth=0.001, max_depth=10.0)
    model = DepthEncoderDecoder(TinyBackbone(embed_dim=D), head, out_index=[2, 5, 8, 11], patch_size=14).eval()
    x = torch.randn(1, 3, 42, 70)
    with torch.inference_mode():
        whole = model.inference(x, mode="whole")
        one_window = model.inference(x, mode="slide", crop_size=(42, 70), stride=(14, 14))
        slid = model.inference(x, mode="slide", crop_size=28, stride=14)
    torch.testing.assert_close(one_window, whole)
    assert slid.shape == (1, 1, 42, 70)
    # 42 x 70 with 28-windows every 14 pixels: 2 x 4 windows
    assert model.backbone.calls == 1 + 1 + 8


def test_flip_meta_unflips_the_prediction():
    D = 16
    head = _make_dinov2_linear_depth_head(embed_dim=D, layers=1, min_depth=0.001, max_depth=10.0)
    model = DepthEncoderDecoder(TinyBackbone(embed_dim=D), head, out_index=[11], patch_size=14).eval()
    x = torch.randn(1, 3, 28, 42)
    meta = [{"ori_shape": (28, 42, 3), "flip": True, "flip_direction": "horizontal"}]
    with torch.inference_mode():
        plain = model.inference(x.flip(3), img_meta=None)
        unflipped = model.inference(x.flip(3), img_meta=meta)
    torch.testing.assert_close(unflipped, plain.flip(3))


def test_extract_head_state_dict_accepts_mmcv_and_plain_layouts():
    w = torch.randn(3)
    mmcv_style = {"meta": {"mmcv_version": "1.5.0"}, "state_dict": {"decode_head.a": w, "backbone.x": w}}
    assert list(extract_head_state_dict(mmcv_style)) == ["a"]
    assert list(extract_head_state_dict({"decode_head.a": w})) == ["a"]
    with pytest.raises(RuntimeError, match="neck.b"):
        extract_head_state_dict({"decode_head.a": w, "neck.b": w}, source="file.pth")
    with pytest.raises(RuntimeError, match="no 'decode_head.\\*' weights"):
        extract_head_state_dict({"state_dict": {"backbone.x": w}})


def test_bad_head_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="bins_strategy"):
        BNHead(classify=True, in_channels=[2], in_index=[0], channels=2, max_depth=1.0, bins_strategy="LID")
    with pytest.raises(ValueError, match="max_depth"):
        BNHead(classify=True, in_channels=[2], in_index=[0], channels=2)
    with pytest.raises(ValueError, match="readout_type"):
        DPTHead(in_channels=[8] * 4, channels=8, embed_dims=8, post_process_channels=[1, 2, 4, 8], readout_type="x")


# --- hub entrypoints (need dinov2.hub.backbones) ---------------------------------------------------------------


@pytest.mark.parametrize("size", ["b", "l", "g"])
@pytest.mark.parametrize("kind", ["ld", "dd"])
def test_large_depthers_build_on_meta_with_the_released_keys(size, kind):
    with torch.device("meta"):
        model = getattr(depthers, f"dinov2_vit{size}14_{kind}")(pretrained=False)
    D = DIMS[size]
    expected_head = _expected_dpt_keys(D) if kind == "dd" else {
        "conv_depth.weight": [256, 8 * D, 1, 1],
        "conv_depth.bias": [256],
    }  # fmt: skip
    assert prefixed_shapes(model, "decode_head.") == expected_head
    assert prefixed_shapes(model, "backbone.") == released_backbone_shapes(f"dinov2_vit{size}14")
    assert model.out_index == {"b": [2, 5, 8, 11], "l": [4, 11, 17, 23], "g": [9, 19, 29, 39]}[size]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs"), [("dinov2_vits14_ld", {"layers": 1}), ("dinov2_vits14_reg_dd", {})])
def test_small_depthers_with_random_weights_predict_at_any_size(name, kwargs):
    model = getattr(depthers, name)(pretrained=False, **kwargs).eval()
    reg = "_reg" in name
    assert prefixed_shapes(model, "backbone.") == released_backbone_shapes(
        "dinov2_vits14_reg" if reg else "dinov2_vits14"
    )
    with torch.inference_mode():
        depth = model(torch.randn(2, 3, 30, 45))
    assert depth.shape == (2, 1, 30, 45)
    assert torch.all(depth >= 0.001 - 1e-6) and torch.all(depth <= 10.0 + 1e-6)


@pytest.mark.parametrize("name", ["dinov2_vits14_dd", "dinov2_vits14_reg_ld"])
def test_other_small_depthers_build_on_meta(name):
    with torch.device("meta"):
        model = getattr(depthers, name)(pretrained=False)
    linear = {"conv_depth.weight": [256, 3072, 1, 1], "conv_depth.bias": [256]}
    assert prefixed_shapes(model, "decode_head.") == (_expected_dpt_keys(384) if name.endswith("_dd") else linear)
    assert prefixed_shapes(model, "backbone.") == released_backbone_shapes(name[: -len("_xd")])


def test_register_depthers_have_no_pretrained_heads():
    with pytest.raises(RuntimeError, match="No depth head weights were released for the register backbones"):
        depthers.dinov2_vits14_reg_dd(pretrained=True)


def test_layers_argument_is_checked():
    with pytest.raises(ValueError, match="layers must be 1 or 4"):
        depthers.dinov2_vits14_ld(layers=2, pretrained=False)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A TORCH_HOME whose hub checkpoint folder holds a (random) ViT-S/14 backbone under its official name."""
    root = tmp_path_factory.mktemp("torch_home")
    backbone = write_backbone_checkpoint(root / "hub" / "checkpoints", "dinov2_vits14", "dinov2_vits14")
    return root, backbone


@pytest.mark.slow
@pytest.mark.parametrize(
    ("entrypoint", "kwargs", "file_name", "max_depth"),
    [
        ("dinov2_vits14_ld", {"weights": "KITTI"}, "dinov2_vits14_kitti_linear4_head.pth", 80.0),
        ("dinov2_vits14_ld", {"layers": 1}, "dinov2_vits14_nyu_linear_head.pth", 10.0),
        ("dinov2_vits14_dd", {"weights": Weights.NYU}, "dinov2_vits14_nyu_dpt_head.pth", 10.0),
    ],
)
def test_pretrained_depthers_load_official_head_files_from_the_hub_cache(
    hub_cache, monkeypatch, entrypoint, kwargs, file_name, max_depth
):
    root, backbone_state = hub_cache
    if entrypoint.endswith("_dd"):
        template = _make_dinov2_dpt_depth_head(embed_dim=384, min_depth=0.001, max_depth=10.0)
    else:
        template = _make_dinov2_linear_depth_head(
            embed_dim=384, layers=kwargs.get("layers", 4), min_depth=0.001, max_depth=10.0
        )
    head_state = perturbed_state_dict(template, prefix="decode_head.")
    # mmcv layout: {"meta": ..., "state_dict": {"decode_head.*": ...}}
    torch.save(
        {"meta": {"mmcv_version": "1.5.0", "iter": 38400}, "state_dict": head_state},
        root / "hub" / "checkpoints" / file_name,
    )
    monkeypatch.setenv("TORCH_HOME", str(root))
    model = getattr(depthers, entrypoint)(pretrained=True, **kwargs)
    assert_state_dict_equal(model.decode_head, head_state, prefix="decode_head.")
    assert_state_dict_equal(model.backbone, backbone_state)
    assert model.decode_head.max_depth == max_depth  # NYU heads predict up to 10 m, KITTI up to 80 m
    with torch.inference_mode():
        assert model.eval()(torch.randn(1, 3, 20, 31)).shape == (1, 1, 20, 31)


@pytest.mark.slow
def test_head_file_with_a_missing_key_is_an_error_naming_it(hub_cache, monkeypatch):
    root, _ = hub_cache
    template = _make_dinov2_dpt_depth_head(embed_dim=384, min_depth=0.001, max_depth=10.0)
    head_state = perturbed_state_dict(template, prefix="decode_head.")
    del head_state["decode_head.project.conv.bias"]
    torch.save({"state_dict": head_state}, root / "hub" / "checkpoints" / "dinov2_vits14_kitti_dpt_head.pth")
    monkeypatch.setenv("TORCH_HOME", str(root))
    with pytest.raises(RuntimeError, match="(?s)dinov2_vits14_kitti_dpt_head.pth.*project.conv.bias"):
        depthers.dinov2_vits14_dd(weights="KITTI")


def test_center_pad_splits_the_padding_evenly():
    x = torch.ones(1, 2, 15, 29)
    padded = center_pad(x, 14)
    assert padded.shape == (1, 2, 28, 42)
    # 13 extra rows: 6 above, 7 below; 13 extra columns: 6 left, 7 right
    torch.testing.assert_close(padded[:, :, 6:21, 6:35], x)
    assert padded.sum() == x.sum()
    assert center_pad(torch.ones(1, 1, 28, 14), 14).shape == (1, 1, 28, 14)


def test_center_pad_matches_the_hub_center_padding():
    from dinov2.hub.utils import CenterPadding

    x = torch.randn(2, 3, 17, 40)
    assert torch.equal(center_pad(x, 14), CenterPadding(14)(x))


def test_a_head_can_be_trained_on_the_padded_features():
    D = 16
    head = _make_dinov2_dpt_depth_head(embed_dim=D, min_depth=0.001, max_depth=10.0)
    backbone = TinyBackbone(embed_dim=D).requires_grad_(False)
    model = DepthEncoderDecoder(backbone, head, out_index=[2, 5, 8, 11], patch_size=14)
    model(torch.randn(1, 3, 20, 30)).mean().backward()  # no inference tensors in the way (unlike the reference hook)
    assert head.conv_depth.head[0].weight.grad is not None
    assert head.reassemble_blocks.readout_projects[0][0].weight.grad.abs().sum() > 0


def test_simple_test_returns_one_numpy_map_per_image():
    D = 16
    head = _make_dinov2_linear_depth_head(embed_dim=D, layers=1, min_depth=0.001, max_depth=10.0)
    model = DepthEncoderDecoder(TinyBackbone(embed_dim=D), head, out_index=[11], patch_size=14).eval()
    with torch.inference_mode():
        maps = model.simple_test(torch.randn(3, 3, 20, 24))
    assert len(maps) == 3 and all(m.shape == (1, 20, 24) for m in maps)


def test_weights_must_name_a_released_set():
    with pytest.raises(ValueError, match="Unsupported weights 7; use one of \\['NYU', 'KITTI'\\]"):
        _get_depth_range(True, 7)
