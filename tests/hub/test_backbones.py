import re
from pathlib import Path

import pytest
import torch

import dinov2.hub.backbones as backbones
from dinov2.hub.utils import CenterPadding, _make_dinov2_model_name
from dinov2.models.weights import load_state_dict_from_url_or_path

REPO_ROOT = Path(__file__).resolve().parents[2]
KEYS_DIR = REPO_ROOT / "tests" / "data" / "checkpoint_keys"
ENTRYPOINTS = [f"dinov2_vit{s}14{r}" for s in "sblg" for r in ("", "_reg")]
PARAM_COUNTS = {"s": 22_056_576, "b": 86_580_480, "l": 304_368_640, "g": 1_136_480_768}


def _expected_keys(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in (KEYS_DIR / f"{name}.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"(\S+) \[([\d, ]*)\] (\w+)", line)
        assert match, line
        shape = tuple(int(s) for s in match.group(2).split(",") if s.strip())
        rows.append((match.group(1), shape, match.group(3)))
    return rows


@pytest.mark.parametrize("name", ENTRYPOINTS)
def test_keys_order_shapes_of_hub_builds(name):
    model = getattr(backbones, name)(pretrained=False, device="meta")
    actual = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert actual == _expected_keys(name)
    if "_reg" not in name:
        assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name[len("dinov2_vit")]]
    assert model.interpolate_offset == (0.0 if "_reg" in name else 0.1)
    assert model.interpolate_antialias == ("_reg" in name)


def test_model_names():
    assert _make_dinov2_model_name("vit_small", 14) == "dinov2_vits14"
    assert _make_dinov2_model_name("vit_giant2", 14, 4) == "dinov2_vitg14_reg4"


def test_center_padding():
    x = torch.ones(1, 2, 15, 28)
    out = CenterPadding(14)(x)
    assert out.shape == (1, 2, 28, 28)
    assert out[0, 0, :6].sum() == 0 and out[0, 0, 6:21].eq(1).all() and out[0, 0, 21:].sum() == 0


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints


@pytest.fixture(scope="module")
def vits14_state():
    torch.manual_seed(1)
    return {k: v.clone() for k, v in backbones.dinov2_vits14(pretrained=False).state_dict().items()}


def test_pretrained_loads_from_hub_cache_without_network(torch_home, vits14_state):
    torch.save(vits14_state, torch_home / "dinov2_vits14_pretrain.pth")
    model = backbones.dinov2_vits14(pretrained=True)
    loaded = model.state_dict()
    assert loaded.keys() == vits14_state.keys()
    for k, v in vits14_state.items():
        assert torch.equal(loaded[k], v), k


# A 2-block ViT-S built through the same entrypoint (kwargs override the released hyper-parameters) keeps the
# error tests fast; the download path and file name are those of dinov2_vits14.
_SMALL = {"depth": 2, "img_size": 28}


def test_pretrained_wrong_size_is_a_clear_error(torch_home):
    bad = backbones.dinov2_vits14(pretrained=False, **_SMALL).state_dict()
    bad["pos_embed"] = torch.zeros(1, 257, 384)
    torch.save(bad, torch_home / "dinov2_vits14_pretrain.pth")
    with pytest.raises(RuntimeError, match=r"pos_embed: checkpoint \(1, 257, 384\) vs model \(1, 5, 384\)"):
        backbones.dinov2_vits14(pretrained=True, **_SMALL)


def test_pretrained_missing_keys_are_listed(torch_home):
    state = backbones.dinov2_vits14(pretrained=False, **_SMALL).state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    torch.save(partial, torch_home / "dinov2_vits14_pretrain.pth")
    with pytest.raises(RuntimeError, match=r"lacks 14 keys.*blocks\.1\.norm1\.weight"):
        backbones.dinov2_vits14(pretrained=True, **_SMALL)


def test_offline_error_names_url_and_cache_path(torch_home):
    url = "http://127.0.0.1:9/x.pth"
    expected_path = str(torch_home / "x.pth")
    with pytest.raises(RuntimeError) as info:
        load_state_dict_from_url_or_path(url)
    assert url in str(info.value) and expected_path in str(info.value)
    with pytest.raises(RuntimeError, match=re.escape(expected_path)):
        backbones.dinov2_vits14(weights=url, device="meta")


def test_weights_argument_forms(tmp_path):
    state = backbones.dinov2_vits14(pretrained=False, **_SMALL).state_dict()
    path = tmp_path / "mine.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()}}, path)
    model = backbones.dinov2_vits14(weights=str(path), **_SMALL)  # a training-style teacher checkpoint
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert backbones._resolve_weights("LVD142M") is backbones.Weights.LVD142M
    with pytest.raises(ValueError, match="unsupported weights 'LVD999M'"):
        backbones.dinov2_vits14(weights="LVD999M")
    with pytest.raises(FileNotFoundError):
        load_state_dict_from_url_or_path(str(tmp_path / "missing.pth"))


def test_torch_hub_load_local():
    model = torch.hub.load(str(REPO_ROOT), "dinov2_vits14", source="local", pretrained=False, device="meta")
    assert type(model).__name__ == "DinoVisionTransformer"
    assert model.pos_embed.shape == (1, 1370, 384)


def test_hubconf_entrypoints():
    import hubconf

    assert hubconf.dependencies == ["torch"]
    assert all(callable(getattr(hubconf, name)) for name in ENTRYPOINTS)


def test_hub_kwargs_override_defaults():
    model = backbones.dinov2_vitb14_reg(pretrained=False, img_size=224, device="meta", num_register_tokens=2)
    assert model.pos_embed.shape == (1, 257, 768) and model.register_tokens.shape == (1, 2, 768)
