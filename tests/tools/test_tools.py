"""dinov2.tools: feature pictures (PCA + attention) from a teacher export, and training-curve plots."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dinov2.configs import dinov2_default_config
from dinov2.fsdp.checkpointer import save_teacher_checkpoint
from dinov2.models import backbone_args_from_cfg, build_model_from_backbone_args
from dinov2.tools import training_curves, visualize


def _export(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    cfg = OmegaConf.merge(
        dinov2_default_config,
        {"student": {"arch": "vit_tiny", "patch_size": 8, "layerscale": 0.1}, "crops": {"global_crops_size": 32}},
    )
    args = backbone_args_from_cfg(cfg)
    model = build_model_from_backbone_args(args)
    path = tmp_path / "teacher_checkpoint.pth"
    save_teacher_checkpoint(path, {f"backbone.{k}": v for k, v in model.state_dict().items()}, backbone_args=args)
    return path, model.eval()


def test_export_rebuilds_the_same_backbone(tmp_path: Path) -> None:
    path, model = _export(tmp_path)
    loaded = visualize.load_backbone(str(path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_visualize_writes_one_picture_row_per_image(tmp_path: Path) -> None:
    path, _ = _export(tmp_path)
    images = []
    for i, size in enumerate(((40, 40), (64, 48))):
        image_path = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(image_path)
        images.append(str(image_path))
    assert visualize.main(["--weights", str(path), "--image", *images, "--out", str(tmp_path / "out")]) == 0
    rows = [Image.open(tmp_path / "out" / f"img{i}_features.png") for i in range(2)]
    # input, PCA, mean attention and 3 heads (vit_tiny), 224 px tiles with 4 px gaps
    assert all(row.width == 6 * 224 + 5 * 4 for row in rows)
    pca = np.asarray(rows[0])[:, 228:452]
    assert pca.std() > 10  # the PCA picture is not flat


def test_pca_colours_span_the_range_and_attention_rows_are_distributions() -> None:
    features = [torch.randn(4, 5, 16), torch.randn(3, 3, 16)]
    pictures = visualize.pca_pictures(features)
    assert [p.shape for p in pictures] == [(4, 5, 3), (3, 3, 3)]
    stacked = np.concatenate([p.reshape(-1, 3) for p in pictures])
    assert (stacked.min(0) == 0).all() and (stacked.max(0) == 255).all()
    model = build_model_from_backbone_args(
        {**backbone_args_from_cfg(OmegaConf.merge(dinov2_default_config, {"student": {"arch": "vit_tiny"}}))}
    ).eval()
    maps = visualize.attention_maps(model, torch.randn(3, 32, 48))
    assert maps.shape == (3, 2, 3)  # heads, 32/16 x 48/16 patches
    assert torch.all(maps.sum(dim=(1, 2)) <= 1.0 + 1e-5)  # the CLS row, without the CLS itself


def test_unknown_weights_name_the_choices(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dinov2_vits14"):
        visualize.load_backbone("dinov2_vitx99")


def test_training_curves_from_a_run_folder(tmp_path: Path) -> None:
    OmegaConf.save(dinov2_default_config, tmp_path / "config.yaml")
    lines = [
        {"iteration": i, "dino_global_crops_loss": 2.0 - i / 100, "ibot_loss": 3.0, "koleo_loss": 0.1,
         "teacher_cls_std": 0.5, "teacher_entropy": 0.8, "teacher_usage_entropy": 0.9}
        for i in range(0, 100, 10)
    ] + [{"iteration": 49, "online_knn_top1": 50.0}, {"iteration": 99, "online_knn_top1": 60.0}]  # fmt: skip
    (tmp_path / "training_metrics.json").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    written = training_curves.plot_run(tmp_path, tmp_path / "plots")
    assert [p.name for p in written] == ["losses.png", "collapse.png", "online_knn.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.width > 300
