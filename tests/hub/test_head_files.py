"""Head entrypoints load a head from a local file (``head_weights=``), strictly, and accept every backbone keyword."""

import inspect
import re
from pathlib import Path

import pytest
import torch

import hubconf
from dinov2.errors import WeightsError

_SMALL = {"depth": 2, "img_size": 28}  # a 2-block ViT-S: the file name and URL stay those of dinov2_vits14
HEADS = {
    "dinov2_vits14_lc": {},
    "dinov2_vits14_ld": {"weights": "NYU"},
    "dinov2_vits14_dd": {"weights": "KITTI"},
    "dinov2_vits14_ls": {"weights": "VOC2012"},
}


@pytest.fixture
def backbone_in_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The released backbone file, made locally and placed where torch.hub looks first."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(hubconf.dinov2_vits14(pretrained=False, **_SMALL).state_dict(), cache / "dinov2_vits14_pretrain.pth")


@pytest.mark.parametrize("entrypoint", sorted(HEADS))
def test_a_head_loads_from_a_local_file(entrypoint: str, tmp_path: Path, backbone_in_hub_cache: None) -> None:
    build = getattr(hubconf, entrypoint)
    torch.manual_seed(0)
    made = build(pretrained=False, **HEADS[entrypoint], **_SMALL)
    head = made.linear_head if entrypoint.endswith("_lc") else made.decode_head
    state = head.state_dict()
    path = tmp_path / "my_head.pth"
    # the released layout: the classifiers' heads are plain, the others are mmcv files with "decode_head." keys
    torch.save(
        state if entrypoint.endswith("_lc") else {"state_dict": {f"decode_head.{k}": v for k, v in state.items()}}, path
    )

    loaded = build(head_weights=str(path), **HEADS[entrypoint], **_SMALL)
    loaded_head = loaded.linear_head if entrypoint.endswith("_lc") else loaded.decode_head
    for key, value in state.items():
        assert torch.equal(loaded_head.state_dict()[key], value), key


def test_a_head_file_that_does_not_fit_is_refused(tmp_path: Path, backbone_in_hub_cache: None) -> None:
    path = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(10, 3), "bias": torch.zeros(10)}, path)
    with pytest.raises(WeightsError, match=re.escape(f"Head weights from {path} do not fit the Linear built")):
        hubconf.dinov2_vits14_lc(head_weights=str(path), **_SMALL)


def test_register_depthers_take_a_head_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(
        hubconf.dinov2_vits14_reg(pretrained=False, **_SMALL).state_dict(), cache / "dinov2_vits14_reg4_pretrain.pth"
    )
    head = hubconf.dinov2_vits14_reg_ld(pretrained=False, **_SMALL).decode_head
    path = tmp_path / "head.pth"
    torch.save({f"decode_head.{k}": v for k, v in head.state_dict().items()}, path)
    model = hubconf.dinov2_vits14_reg_ld(head_weights=str(path), weights="KITTI", **_SMALL)
    assert torch.equal(model.decode_head.state_dict()["conv_depth.weight"], head.state_dict()["conv_depth.weight"])
    assert model.decode_head.max_depth == 80.0  # weights= still sets the depth range of the given head


# keywords of the backbone builder that every entrypoint passes on (values as the released models use them)
_BACKBONE_KEYWORDS = {"interpolate_offset": 0.1, "interpolate_antialias": False, "init_values": 1.0, "block_chunks": 0}


@pytest.mark.parametrize("entrypoint", sorted(name for name in dir(hubconf) if name.startswith("dinov2_")))
def test_every_entrypoint_accepts_every_backbone_keyword(entrypoint: str) -> None:
    build = getattr(hubconf, entrypoint)
    assert "kwargs" in inspect.signature(build).parameters
    ffn = "swiglufused" if "vitg" in entrypoint else "mlp"
    registers = 4 if "_reg" in entrypoint else 0
    with torch.device("meta"):  # shapes only
        model = build(
            pretrained=False, ffn_layer=ffn, num_register_tokens=registers, **_BACKBONE_KEYWORDS, depth=1, img_size=28
        )
    backbone = getattr(model, "backbone", model)
    assert backbone.interpolate_offset == 0.1 and backbone.num_register_tokens == registers
