import pytest
import torch

from dinov2.hub.classifiers import _LinearClassifierWrapper, _make_dinov2_linear_classification_head
from dinov2.hub.imagenet_classes import IMAGENET1K_CLASS_NAMES
from tests.hub.heads_standin import TinyBackbone


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
