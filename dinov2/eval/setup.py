"""Common setup of the evaluation entry points: the shared CLI flags and building the frozen teacher backbone."""

import argparse
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dinov2.errors import ConfigError
from dinov2.utils.dtype import as_torch_dtype

logger = logging.getLogger("dinov2")

__all__ = [
    "RANDOM_WEIGHTS",
    "RAW_PIXELS",
    "get_args_parser",
    "get_autocast_dtype",
    "build_model_for_eval",
    "setup_and_build_model",
    "eval_transform_from_args",
    "run_eval",
]

# Values of --pretrained-weights for the two baselines: a randomly initialised backbone, and the pixels themselves.
RANDOM_WEIGHTS = "random"
RAW_PIXELS = "raw-pixels"


def get_args_parser(
    description: str | None = None,
    parents: list[argparse.ArgumentParser] | None = None,
    add_help: bool = True,
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, parents=parents or [], add_help=add_help)
    parser.add_argument("--config-file", type=str, help="Model configuration file (the training config.yaml)")
    parser.add_argument(
        "--pretrained-weights",
        type=str,
        help=f"Teacher checkpoint (path or URL) with a 'teacher' entry; '{RANDOM_WEIGHTS}' evaluates a random init, "
        f"'{RAW_PIXELS}' the (normalised) pixels of the eval crop as features",
    )
    parser.add_argument("--output-dir", default="", type=str, help="Output directory to write results and logs")
    parser.add_argument("--opts", help="Extra configuration options (key=value)", default=[], nargs="+")
    return parser


def get_autocast_dtype(config) -> torch.dtype:
    """Eval autocast dtype = the teacher backbone's training param dtype (fp16 / bf16), float32 otherwise."""
    name = config.compute_precision.teacher.backbone.mixed_precision.param_dtype
    dtype = as_torch_dtype(name)
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def build_model_for_eval(
    config, pretrained_weights: str | None, device: torch.device | None = None, *, from_export: bool = False
) -> nn.Module:
    """Teacher backbone of ``config`` with the weights of ``pretrained_weights`` (``"teacher"`` entry), in eval mode.

    Loading goes through ``load_pretrained_weights``, which is strict about backbone keys, so a partly random
    backbone cannot slip through. Pass ``"random"`` to evaluate the random initialisation deliberately,
    ``"raw-pixels"`` for the pixel baseline. With ``from_export``, a training export that carries ``backbone_args``
    gets the architecture they describe instead of ``config``'s. The file is read once.
    """
    # Imported here so the metric and k-NN helpers stay usable without building the model stack.
    from dinov2.eval.utils import RawPixels
    from dinov2.models import build_model_from_backbone_args, build_model_from_cfg
    from dinov2.models.weights import load_pretrained_weights, load_state_dict_from_url_or_path

    if not pretrained_weights:
        raise ConfigError(
            "no --pretrained-weights given; pass the teacher checkpoint (e.g. <train output>/eval/training_<it>/"
            f"teacher_checkpoint.pth), '{RANDOM_WEIGHTS}' for a random-init baseline or '{RAW_PIXELS}' for pixels"
        )
    if pretrained_weights == RAW_PIXELS:
        return RawPixels()
    checkpoint = None if pretrained_weights == RANDOM_WEIGHTS else load_state_dict_from_url_or_path(pretrained_weights)
    export_args = checkpoint.get("backbone_args") if checkpoint is not None else None
    if from_export and isinstance(export_args, dict):
        model = build_model_from_backbone_args(export_args)
    else:
        model, _ = build_model_from_cfg(config, only_teacher=True)
    if checkpoint is None:
        logger.warning("--pretrained-weights %s: evaluating a randomly initialised backbone", RANDOM_WEIGHTS)
    else:
        load_pretrained_weights(model, checkpoint, "teacher", name=pretrained_weights)
    model.eval()
    if device is not None:
        model.to(device)
    return model


def _setup(args: argparse.Namespace):
    """The training's setup for an eval run: config, process group (if launched so), logging, seeds, config.yaml.
    Unlike training, the lr scaling rule is not applied: the config is the model's description here."""
    from dinov2 import distributed
    from dinov2.utils.config import default_setup, get_cfg_from_args, write_config

    config = get_cfg_from_args(args)  # also makes args.output_dir absolute
    os.makedirs(args.output_dir, exist_ok=True)
    default_setup(args, seed=getattr(args, "seed", 0))
    if distributed.is_main_process():
        write_config(config, args.output_dir)
    return config


def setup_and_build_model(args: argparse.Namespace) -> tuple[nn.Module, torch.dtype]:
    """Runs the training setup (config, logging, seeds, process group if launched so) and builds the teacher.

    On CPU the autocast dtype is float32: fp16/bf16 autocast there is slow and changes the features' numerics.
    """
    from dinov2 import distributed

    torch.backends.cudnn.benchmark = True
    config = _setup(args)
    device = distributed.get_device()
    # Without --config-file, an export that describes its backbone builds that backbone (not the default ViT-L).
    model = build_model_for_eval(config, args.pretrained_weights, device=device, from_export=not args.config_file)
    autocast_dtype = get_autocast_dtype(config)
    if device.type == "cpu" and autocast_dtype != torch.float32:
        logger.info("running on CPU: evaluating in float32 instead of %s", autocast_dtype)
        autocast_dtype = torch.float32
    return model, autocast_dtype


def eval_transform_from_args(args: argparse.Namespace) -> Callable:
    """The classification eval transform at the ``--resize-size`` / ``--crop-size`` of the command line."""
    from dinov2.data.transforms import make_classification_eval_transform

    return make_classification_eval_transform(resize_size=args.resize_size, crop_size=args.crop_size)


def run_eval(args: argparse.Namespace, eval_with_model: Callable[..., Any], **eval_kwargs: Any) -> int:
    """The body of every eval entry point's ``main``: training setup, frozen teacher, then ``eval_with_model``.

    ``eval_with_model`` (which writes the results file) receives the model and its autocast dtype plus the flags all
    evals share (``--output-dir``, ``--train-dataset``, ``--val-dataset``, ``--batch-size``) as keywords, and
    ``eval_kwargs``, its own flags. Returns 0, the process exit status.
    """
    model, autocast_dtype = setup_and_build_model(args)
    eval_with_model(
        model=model,
        autocast_dtype=autocast_dtype,
        output_dir=args.output_dir,
        train_dataset_str=args.train_dataset_str,
        val_dataset_str=args.val_dataset_str,
        batch_size=args.batch_size,
        **eval_kwargs,
    )
    return 0
