import logging

import pytest
import torch

from dinov2.models import vision_transformer as vits
from dinov2.models.weights import load_pretrained_weights


def _vit(block_chunks: int) -> vits.DinoVisionTransformer:
    return vits.DinoVisionTransformer(
        img_size=16, patch_size=4, embed_dim=16, depth=4, num_heads=2, init_values=1.0, block_chunks=block_chunks
    ).eval()


def _assert_same_weights(a, b):
    from dinov2.models.checkpoint_filter import to_flat_block_keys

    flat_a, flat_b = to_flat_block_keys(a.state_dict()), to_flat_block_keys(b.state_dict())
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        assert torch.equal(flat_a[k], flat_b[k]), k
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize(("src_chunks", "dst_chunks"), [(2, 0), (0, 2), (4, 2), (0, 0)])
def test_prefixes_and_layouts(tmp_path, caplog, src_chunks, dst_chunks):
    source = _vit(src_chunks)
    state = {f"module.backbone.{k}": v for k, v in source.state_dict().items()}
    state["dino_head.mlp.0.weight"] = torch.zeros(3, 3)  # a head next to the backbone, as in teacher checkpoints
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": state, "iteration": 7}, path)
    target = _vit(dst_chunks)
    with caplog.at_level(logging.INFO, logger="dinov2"):
        load_pretrained_weights(target, str(path), "teacher")
    assert "dino_head.mlp.0.weight" in caplog.text  # extra keys are ignored but logged
    _assert_same_weights(source, target)


def test_prefix_only_stripped_at_the_start(tmp_path):
    source = _vit(0)
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["head_module.backbone.x"] = torch.zeros(1)
    torch.save(state, tmp_path / "c.pth")
    target = _vit(0)
    load_pretrained_weights(target, str(tmp_path / "c.pth"), checkpoint_key=None)
    _assert_same_weights(source, target)


def test_missing_keys_are_listed(tmp_path):
    state = {k: v for k, v in _vit(0).state_dict().items() if k not in ("norm.weight", "blocks.2.ls1.gamma")}
    torch.save({"model": state}, tmp_path / "c.pth")
    # keys are named in the target model's layout (chunked here)
    with pytest.raises(RuntimeError, match=r"lacks 2 keys of the model: blocks\.1\.2\.ls1\.gamma, norm\.weight"):
        load_pretrained_weights(_vit(2), str(tmp_path / "c.pth"), "model")
