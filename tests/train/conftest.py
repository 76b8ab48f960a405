"""Tiny training setup shared by the training tests: a ViT-Ti with 2 blocks on 32/16-pixel crops of generated
images, small heads, 6 iterations, no data-loader workers."""

import argparse
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2 import models
from dinov2.models import vision_transformer as vits

TINY_DEPTH = 2

TINY_OPTS = (
    "crops.global_crops_size=32",
    "crops.local_crops_size=16",
    "crops.local_crops_number=2",
    "student.patch_size=8",
    "student.drop_path_rate=0.0",
    "dino.head_n_prototypes=64",
    "dino.head_hidden_dim=32",
    "dino.head_bottleneck_dim=16",
    "ibot.head_n_prototypes=64",
    "ibot.head_hidden_dim=32",
    "ibot.head_bottleneck_dim=16",
    "train.batch_size_per_gpu=4",
    "train.num_workers=0",
    "train.OFFICIAL_EPOCH_LENGTH=6",
    "train.saveckp_freq=0",
    "optim.epochs=1",
    "optim.warmup_epochs=0",
    "optim.freeze_last_layer_epochs=0",
    "teacher.warmup_teacher_temp_epochs=1",
    "evaluation.eval_period_iterations=0",
)


def use_tiny_depth() -> None:
    """Makes ``student.arch=vit_tiny`` build 2 blocks instead of 12 (also called inside spawned ranks)."""
    models._ARCHS["vit_tiny"] = partial(vits.vit_tiny, depth=TINY_DEPTH)


def write_images(root: Path, count: int = 16) -> Path:
    """``count`` 40x40 PNGs: a flat colour with a vertical band whose width and colour vary per image."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.ones((40, 40, 3)) * rng.integers(0, 256, (1, 1, 3))  # [H, W, 3]
        pixels[:, : (i % 4 + 1) * 8] = rng.integers(0, 256, 3)
        Image.fromarray(pixels.astype(np.uint8)).save(root / f"{i:02d}.png")
    return root


def make_args(
    output_dir: Path, image_root: Path, *opts: str, no_resume: bool = False, resume_with_changes: bool = False
) -> argparse.Namespace:
    """Parsed training arguments for the tiny setup (``opts`` override ``TINY_OPTS``)."""
    from dinov2.train import get_args_parser

    argv = ["--config-file", "train/vit_tiny_cpu", "--output-dir", str(output_dir)]
    argv += ["--no-resume"] if no_resume else []
    argv += ["--resume-with-changes"] if resume_with_changes else []
    argv += [f"train.dataset_path=ImageFolder:root={image_root}", *TINY_OPTS, *opts]
    return get_args_parser(add_help=False).parse_args(argv)


def make_cfg(output_dir: Path, image_root: Path, *opts: str):
    """The tiny config with the lr scaling rule applied (what ``setup`` gives, without logging or config.yaml)."""
    from dinov2.utils.config import apply_scaling_rules_to_cfg, get_cfg_from_args

    return apply_scaling_rules_to_cfg(get_cfg_from_args(make_args(output_dir, image_root, *opts)))


@pytest.fixture(autouse=True)
def _tiny_model(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    monkeypatch.setitem(models._ARCHS, "vit_tiny", partial(vits.vit_tiny, depth=TINY_DEPTH))
    monkeypatch.setenv("DINOV2_CACHE_DIR", str(tmp_path_factory.mktemp("dinov2_cache")))
    monkeypatch.setenv("DINOV2_DEVICE", "cpu")
    # Tiny matrices gain nothing from threads, and on a busy machine every op waiting for a descheduled OpenMP
    # thread made these tests 30x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("images"))
