import pytest
import torch

import dinov2.hub.segmenters as segmenters
from dinov2.hub.depth.ops import sliding_window_inference
from dinov2.hub.segmentation import BNHead, SegmentationEncoderDecoder, colorize, get_class_names, get_palette
from dinov2.hub.segmentation.encoder_decoder import resize_short_side
from dinov2.hub.segmenters import _make_dinov2_linear_segmentation_head
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


def _expected_bnhead_keys(channels: int, num_classes: int) -> dict[str, list[int]]:
    """decode_head.* of the released linear heads: mmseg BNHead = (Sync)BatchNorm ``bn`` + 1x1 ``conv_seg``."""
    return {
        "bn.weight": [channels],
        "bn.bias": [channels],
        "bn.running_mean": [channels],
        "bn.running_var": [channels],
        "bn.num_batches_tracked": [],
        "conv_seg.weight": [num_classes, channels, 1, 1],
        "conv_seg.bias": [num_classes],
    }


@pytest.mark.parametrize("size", sorted(DIMS))
@pytest.mark.parametrize("mode", ["linear", "ms"])
@pytest.mark.parametrize("num_classes", [150, 21])
def test_segmentation_head_keys_and_shapes(size, mode, num_classes):
    D = DIMS[size]
    head = _make_dinov2_linear_segmentation_head(embed_dim=D, mode=mode, num_classes=num_classes)
    channels = D if mode == "linear" else 4 * D  # ViT-B/14 ADE20K linear: in_channels = channels = 768
    assert _shapes(head) == _expected_bnhead_keys(channels, num_classes)
    assert head.in_index == ([3] if mode == "linear" else [0, 1, 2, 3])


def test_bnhead_uses_the_selected_inputs_only():
    head = BNHead(in_channels=[4], channels=4, num_classes=3, in_index=[3], dropout_ratio=0.0).eval()
    maps = [torch.randn(1, 4, 2, 3) for _ in range(4)]
    expected = head.conv_seg(head.bn(maps[3]))
    torch.testing.assert_close(head(maps), expected)
    changed = [torch.randn_like(m) for m in maps[:3]] + [maps[3]]
    torch.testing.assert_close(head(changed), expected)


def test_bnhead_concatenates_resized_inputs_and_cls_pairs():
    head = BNHead(in_channels=[2, 2, 2], channels=6, num_classes=1, in_index=[0, 1, 2], dropout_ratio=0.0).eval()
    patch = torch.randn(1, 2, 4, 4)
    small = torch.randn(1, 2, 2, 2)
    cls_token = torch.randn(1, 2)
    x = head._transform_inputs([[patch, cls_token], small])  # a (map, cls) pair contributes both
    assert x.shape == (1, 6, 4, 4)
    torch.testing.assert_close(x[:, :2], patch)
    torch.testing.assert_close(x[:, 2:4], cls_token[:, :, None, None].expand(1, 2, 4, 4))


def test_bnhead_rejects_inconsistent_channels():
    with pytest.raises(ValueError, match="channels == sum\\(in_channels\\) = 768"):
        BNHead(in_channels=[768], channels=3072, num_classes=150, in_index=[3])
    with pytest.raises(ValueError, match="same length"):
        BNHead(in_channels=[768], channels=768, num_classes=150, in_index=[0, 1])


def test_sliding_window_counts_and_averages():
    calls = []

    def predict(crop):
        calls.append(tuple(crop.shape[2:]))
        return crop[:, :1] * 2  # a per-pixel prediction: overlaps must average to the same value

    img = torch.randn(2, 3, 1000, 700)
    out = sliding_window_inference(predict, img, out_channels=1, crop_size=512, stride=341)
    torch.testing.assert_close(out, img[:, :1] * 2)
    # 1000: windows at 0, 341, 488 (last one shifted back) -> 3; 700: 0, 188 -> 2
    assert len(calls) == 3 * 2 and set(calls) == {(512, 512)}
    small = sliding_window_inference(predict, torch.randn(1, 3, 100, 200), out_channels=1, crop_size=512, stride=341)
    assert small.shape == (1, 1, 100, 200) and calls[-1] == (100, 200)


def test_resize_short_side_rounds_like_mmcv():
    assert resize_short_side(torch.zeros(1, 3, 300, 450), 512).shape[2:] == (512, 768)
    assert resize_short_side(torch.zeros(1, 3, 375, 500), 512).shape[2:] == (512, 683)  # 682.67 -> 683
    assert resize_short_side(torch.zeros(1, 3, 900, 600), 675).shape[2:] == (1013, 675)  # 1012.5 -> 1013


def _segmenter(**kwargs) -> SegmentationEncoderDecoder:
    D = 16
    head = BNHead(in_channels=[D] * 4, channels=4 * D, num_classes=5, in_index=[0, 1, 2, 3], dropout_ratio=0.0)
    return SegmentationEncoderDecoder(TinyBackbone(embed_dim=D), head, out_index=[8, 9, 10, 11], **kwargs).eval()


@pytest.mark.parametrize("hw", [(50, 73), (30, 30)])
def test_segmenter_probabilities_at_input_size(hw):
    model = _segmenter(short_side=None, crop_size=28, stride=20)
    with torch.inference_mode():
        probs = model(torch.randn(2, 3, *hw))
        classes = model.predict(torch.randn(2, 3, *hw))
    assert probs.shape == (2, 5, *hw)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, *hw))
    assert classes.shape == (2, *hw) and classes.dtype == torch.int64
    assert all(s[2] % 14 == 0 and s[3] % 14 == 0 for s in model.backbone.input_shapes)


def test_multiscale_flip_runs_every_scale_both_ways_and_is_flip_consistent():
    model = _segmenter(short_side=28, scales=(1.0, 1.5), flip=True, mode="whole")
    x = torch.randn(1, 3, 28, 42)
    with torch.inference_mode():
        probs = model(x)
        probs_of_flipped = model(x.flip(3))
    # short side 28 -> 28 x 42 and 42 x 63, each plain and flipped
    assert sorted({s[2:] for s in model.backbone.input_shapes}) == [(28, 42), (42, 70)]
    assert model.backbone.calls == 2 * 2 * 2
    torch.testing.assert_close(probs_of_flipped, probs.flip(3))  # averaging both flips makes it symmetric


def test_segmenter_rejects_bad_settings():
    model = _segmenter(short_side=None)
    model.mode = "sliding"
    with pytest.raises(ValueError, match="mode must be 'slide' or 'whole'"):
        model(torch.randn(1, 3, 28, 28))


def test_class_names_and_palettes():
    assert len(get_class_names("ADE20K")) == len(get_palette("ade20k")) == 150
    assert len(get_class_names("VOC2012")) == len(get_palette("VOC2012")) == 21
    assert get_class_names("ADE20K")[:3] == ("wall", "building", "sky")
    assert get_class_names("VOC2012")[15] == "person"
    seg = torch.tensor([[0, 15], [20, 99]])
    rgb = colorize(seg, "VOC2012")
    assert rgb.shape == (2, 2, 3) and rgb.dtype.name == "uint8"
    # VOC annotation colours: background black, person (192, 128, 128), tvmonitor (0, 64, 128); unknown ids black
    assert [tuple(c) for c in rgb.reshape(-1, 3)] == [(0, 0, 0), (192, 128, 128), (0, 64, 128), (0, 0, 0)]
    assert tuple(colorize(torch.zeros(1, 1, dtype=torch.long), "ADE20K")[0, 0]) == (120, 120, 120)  # wall
    with pytest.raises(ValueError, match="Unknown segmentation dataset 'COCO'"):
        get_palette("COCO")


# --- hub entrypoints (need dinov2.hub.backbones) ---------------------------------------------------------------


@pytest.mark.parametrize("size", ["b", "l", "g"])
@pytest.mark.parametrize("mode", ["linear", "ms"])
def test_large_segmenters_build_on_meta_with_the_released_keys(size, mode):
    with torch.device("meta"):
        model = getattr(segmenters, f"dinov2_vit{size}14_ls")(weights="ADE20K", mode=mode, pretrained=False)
    channels = DIMS[size] * (1 if mode == "linear" else 4)
    assert prefixed_shapes(model, "decode_head.") == _expected_bnhead_keys(channels, 150)
    assert prefixed_shapes(model, "backbone.") == released_backbone_shapes(f"dinov2_vit{size}14")
    depth = {"b": 12, "l": 24, "g": 40}[size]
    assert model.out_index == list(range(depth - 4, depth))


@pytest.mark.slow
@pytest.mark.parametrize(("weights", "num_classes", "mode"), [("ADE20K", 150, "linear"), ("VOC2012", 21, "ms")])
def test_small_segmenters_with_random_weights(weights, num_classes, mode):
    model = segmenters.dinov2_vits14_ls(weights=weights, mode=mode, pretrained=False).eval()
    released = {"linear": ((1.0,), False, 512, 512, 341), "ms": ((1.0, 1.32, 1.73, 2.28, 3.0), True, 640, 640, 320)}
    assert (model.scales, model.flip, model.short_side, model.crop_size, model.stride) == released[mode]
    model.scales, model.short_side, model.crop_size, model.stride = model.scales[:2], 28, 28, 28  # small and fast
    with torch.inference_mode():
        probs = model(torch.randn(1, 3, 30, 45))
    assert probs.shape == (1, num_classes, 30, 45)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, 30, 45))


def test_segmenter_mode_is_checked():
    with pytest.raises(ValueError, match="mode must be 'linear' or 'ms'"):
        segmenters.dinov2_vits14_ls(mode="m2f", pretrained=False)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_home")
    backbone = write_backbone_checkpoint(root / "hub" / "checkpoints", "dinov2_vits14", "dinov2_vits14")
    return root, backbone


@pytest.mark.slow
@pytest.mark.parametrize(("weights", "mode"), [("ADE20K", "linear"), ("VOC2012", "ms")])
def test_pretrained_segmenters_load_official_head_files_from_the_hub_cache(hub_cache, monkeypatch, weights, mode):
    root, backbone_state = hub_cache
    num_classes = len(get_class_names(weights))
    template = _make_dinov2_linear_segmentation_head(embed_dim=384, mode=mode, num_classes=num_classes)
    head_state = perturbed_state_dict(template, prefix="decode_head.")
    file_name = f"dinov2_vits14_{weights.lower()}_{mode}_head.pth"
    torch.save(
        {"meta": {"CLASSES": get_class_names(weights)}, "state_dict": head_state}, root / "hub/checkpoints" / file_name
    )
    monkeypatch.setenv("TORCH_HOME", str(root))
    model = segmenters.dinov2_vits14_ls(weights=weights, mode=mode)
    assert_state_dict_equal(model.decode_head, head_state, prefix="decode_head.")
    assert_state_dict_equal(model.backbone, backbone_state)
