import pytest
import torch

import dinov2.hub.classifiers as classifiers
from dinov2.hub.classifiers import _LinearClassifierWrapper, _make_dinov2_linear_classification_head
from dinov2.hub.imagenet_classes import IMAGENET1K_CLASS_NAMES
from tests.hub.heads_standin import (
    TinyBackbone,
    assert_state_dict_equal,
    prefixed_shapes,
    released_backbone_shapes,
    write_backbone_checkpoint,
)


@pytest.mark.parametrize(
    ("embed_dim", "layers", "in_features"),
    [(384, 4, 1920), (384, 1, 768), (768, 4, 3840), (1024, 1, 2048), (1536, 4, 7680)],  # spec 3.6
)
def test_linear_head_keys_and_shapes(embed_dim, layers, in_features):
    head = _make_dinov2_linear_classification_head(embed_dim=embed_dim, layers=layers, pretrained=False)
    assert {k: list(v.shape) for k, v in head.state_dict().items()} == {
        "weight": [1000, in_features],
        "bias": [1000],
    }


def test_layers_must_be_1_or_4():
    with pytest.raises(ValueError, match="layers must be 1 or 4"):
        _make_dinov2_linear_classification_head(embed_dim=8, layers=2, pretrained=False)
    with pytest.raises(ValueError, match="Unsupported weights 'IMAGENET22K'"):
        _make_dinov2_linear_classification_head(embed_dim=8, layers=4, pretrained=False, weights="IMAGENET22K")


def test_four_layer_input_is_the_last_four_cls_tokens_then_the_mean_patch_token():
    D = 8
    backbone = TinyBackbone(embed_dim=D, depth=6)
    model = _LinearClassifierWrapper(backbone=backbone, linear_head=torch.nn.Linear(5 * D, 1000), layers=4)
    x = torch.randn(2, 3, 28, 42)
    features = model.linear_input(x)
    assert features.shape == (2, 5 * D)
    for slot, block in enumerate([2, 3, 4, 5]):  # blocks in increasing depth, each with the final norm
        ((_, cls_token),) = backbone.get_intermediate_layers(x, n=[block], return_class_token=True, norm=True)
        torch.testing.assert_close(features[:, slot * D : (slot + 1) * D], cls_token)
    last = backbone.forward_features(x)
    torch.testing.assert_close(features[:, 3 * D : 4 * D], last["x_norm_clstoken"])
    torch.testing.assert_close(features[:, 4 * D :], last["x_norm_patchtokens"].mean(dim=1))
    assert model(x).shape == (2, 1000)


def test_one_layer_input_is_cls_and_mean_patch_token():
    D = 8
    backbone = TinyBackbone(embed_dim=D, depth=3)
    head = torch.nn.Linear(2 * D, 1000)
    model = _LinearClassifierWrapper(backbone=backbone, linear_head=head, layers=1)
    x = torch.randn(1, 3, 14, 28)
    last = backbone.forward_features(x)
    expected = torch.cat([last["x_norm_clstoken"], last["x_norm_patchtokens"].mean(dim=1)], dim=1)
    torch.testing.assert_close(model.linear_input(x), expected)
    torch.testing.assert_close(model(x), head(expected))


def test_imagenet_class_names():
    names = IMAGENET1K_CLASS_NAMES
    assert len(names) == 1000
    # a few well-known ids of the ImageNet-1k (ILSVRC-2012) class list
    assert names[0] == "tench" and names[1] == "goldfish" and names[207] == "golden retriever"
    assert names[285] == "Egyptian cat" and names[409] == "analog clock" and names[999] == "toilet tissue"


# --- hub entrypoints (need dinov2.hub.backbones) ---------------------------------------------------------------

DIMS = {"s": 384, "b": 768, "l": 1024, "g": 1536}


@pytest.mark.parametrize("size", ["b", "l", "g"])
@pytest.mark.parametrize("reg", [False, True])
def test_large_classifiers_build_on_meta_with_the_released_keys(size, reg):
    name = f"dinov2_vit{size}14{'_reg' if reg else ''}"
    with torch.device("meta"):
        model = getattr(classifiers, f"{name}_lc")(pretrained=False)
    assert prefixed_shapes(model, "linear_head.") == {"weight": [1000, 5 * DIMS[size]], "bias": [1000]}
    assert prefixed_shapes(model, "backbone.") == released_backbone_shapes(name)


@pytest.mark.slow
@pytest.mark.parametrize(("reg", "layers"), [(False, 4), (True, 1)])
def test_small_classifiers_with_random_weights(reg, layers):
    model = getattr(classifiers, f"dinov2_vits14{'_reg' if reg else ''}_lc")(layers=layers, pretrained=False).eval()
    assert prefixed_shapes(model, "linear_head.") == {"weight": [1000, (1 + layers) * 384], "bias": [1000]}
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 28, 42)).shape == (2, 1000)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A TORCH_HOME holding (random) ViT-S/14 backbones, with and without registers, under their official names."""
    root = tmp_path_factory.mktemp("torch_home")
    folder = root / "hub" / "checkpoints"
    plain = write_backbone_checkpoint(folder, "dinov2_vits14", "dinov2_vits14")
    reg = write_backbone_checkpoint(folder, "dinov2_vits14_reg", "dinov2_vits14_reg4")
    return root, {"": plain, "_reg": reg}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("reg", "layers", "file_name"),
    [("", 1, "dinov2_vits14_linear_head.pth"), ("_reg", 4, "dinov2_vits14_reg4_linear4_head.pth")],
)
def test_pretrained_classifiers_load_official_head_files_from_the_hub_cache(
    hub_cache, monkeypatch, reg, layers, file_name
):
    root, backbones = hub_cache
    head_state = {"weight": torch.randn(1000, (1 + layers) * 384), "bias": torch.randn(1000)}
    torch.save(head_state, root / "hub" / "checkpoints" / file_name)
    monkeypatch.setenv("TORCH_HOME", str(root))
    model = getattr(classifiers, f"dinov2_vits14{reg}_lc")(layers=layers, weights="IMAGENET1K")
    assert_state_dict_equal(model.linear_head, head_state)
    assert_state_dict_equal(model.backbone, backbones[reg])
    x = torch.randn(1, 3, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(model.eval()(x), model.linear_head(model.linear_input(x)))


@pytest.mark.slow
def test_head_file_with_wrong_shapes_is_an_error_naming_the_file(hub_cache, monkeypatch):
    root, _ = hub_cache
    torch.save(
        {"weight": torch.randn(1000, 768), "bias": torch.randn(1000)},
        root / "hub/checkpoints/dinov2_vits14_linear4_head.pth",
    )
    monkeypatch.setenv("TORCH_HOME", str(root))
    with pytest.raises(RuntimeError, match="(?s)dinov2_vits14_linear4_head.pth.*size mismatch"):
        classifiers.dinov2_vits14_lc(layers=4)
