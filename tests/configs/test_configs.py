"""Packaged YAMLs: every reference key with its reference default, presets as the spec lists them."""

import pytest
import torch
from omegaconf import OmegaConf

from dinov2.configs import available_configs, dinov2_default_config, load_and_merge_config, load_config
from dinov2.models import build_model_from_cfg

# spec section 7.1: every key of the reference ssl_default_config.yaml and its default
REFERENCE_DEFAULTS = {
    "MODEL.WEIGHTS": "",
    "compute_precision.grad_scaler": True,
    "dino.loss_weight": 1.0,
    "dino.head_n_prototypes": 65536,
    "dino.head_bottleneck_dim": 256,
    "dino.head_nlayers": 3,
    "dino.head_hidden_dim": 2048,
    "dino.koleo_loss_weight": 0.1,
    "ibot.loss_weight": 1.0,
    "ibot.mask_sample_probability": 0.5,
    "ibot.mask_ratio_min_max": [0.1, 0.5],
    "ibot.separate_head": False,
    "ibot.head_n_prototypes": 65536,
    "ibot.head_bottleneck_dim": 256,
    "ibot.head_nlayers": 3,
    "ibot.head_hidden_dim": 2048,
    "train.batch_size_per_gpu": 64,
    "train.dataset_path": "ImageNet:split=TRAIN",
    "train.output_dir": ".",
    "train.seed": 0,
    "train.num_workers": 10,
    "train.OFFICIAL_EPOCH_LENGTH": 1250,
    "train.cache_dataset": True,
    "train.centering": "centering",
    "student.arch": "vit_large",
    "student.patch_size": 16,
    "student.drop_path_rate": 0.3,
    "student.layerscale": 1.0e-05,
    "student.drop_path_uniform": True,
    "student.pretrained_weights": "",
    "student.ffn_layer": "mlp",
    "student.block_chunks": 0,
    "student.qkv_bias": True,
    "student.proj_bias": True,
    "student.ffn_bias": True,
    "student.num_register_tokens": 0,
    "student.interpolate_antialias": False,
    "student.interpolate_offset": 0.1,
    "teacher.momentum_teacher": 0.992,
    "teacher.final_momentum_teacher": 1,
    "teacher.warmup_teacher_temp": 0.04,
    "teacher.teacher_temp": 0.07,
    "teacher.warmup_teacher_temp_epochs": 30,
    "optim.epochs": 100,
    "optim.weight_decay": 0.04,
    "optim.weight_decay_end": 0.4,
    "optim.base_lr": 0.004,
    "optim.lr": 0.0,
    "optim.warmup_epochs": 10,
    "optim.min_lr": 1.0e-06,
    "optim.clip_grad": 3.0,
    "optim.freeze_last_layer_epochs": 1,
    "optim.scaling_rule": "sqrt_wrt_1024",
    "optim.patch_embed_lr_mult": 0.2,
    "optim.layerwise_decay": 0.9,
    "optim.adamw_beta1": 0.9,
    "optim.adamw_beta2": 0.999,
    "crops.global_crops_scale": [0.32, 1.0],
    "crops.local_crops_number": 8,
    "crops.local_crops_scale": [0.05, 0.32],
    "crops.global_crops_size": 224,
    "crops.local_crops_size": 96,
    "evaluation.eval_period_iterations": 12500,
}
# reduce dtype is fp32 only for the student heads
PRECISION = {
    f"{who}.{part}": ("SHARD_GRAD_OP", "fp16", "fp32" if who == "student" and part != "backbone" else "fp16", "fp32")
    for who in ("teacher", "student")
    for part in ("backbone", "dino_head", "ibot_head")
}
NEW_KEYS = {
    "train.saveckp_freq": 3750,
    "train.max_to_keep": 3,
    "train.compile": False,
    "train.max_nan_steps": 0,
    "train.cpu_threads": 0,
    "crops.global_crops_1_blur_p": 0.0,
    "crops.global_crops_2_blur_p": 0.9,
    "crops.local_crops_blur_p": 0.5,
    "crops.color_on_batch": False,
    "crops.fast_crops": False,
    "student.depth": 0,
    "recipe.auto": False,
    "recipe.budget_minutes": 0.0,
    "evaluation.online_knn.train_dataset": "",
    "evaluation.online_knn.val_dataset": "",
    "evaluation.online_knn.max_train_samples": 10000,
    "evaluation.online_knn.max_val_samples": 2000,
    "evaluation.online_knn.k": 20,
    "evaluation.online_knn.temperature": 0.07,
}


def _get(cfg, key: str):
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value


@pytest.mark.parametrize("key", sorted({**REFERENCE_DEFAULTS, **NEW_KEYS}))
def test_default_key_and_value(key: str) -> None:
    expected = {**REFERENCE_DEFAULTS, **NEW_KEYS}[key]
    assert _get(dinov2_default_config, key) == expected


def test_default_precision_layout() -> None:
    for path, (strategy, param, reduce, buffer) in PRECISION.items():
        node = dinov2_default_config.compute_precision[path.split(".")[0]][path.split(".")[1]]
        assert node.sharding_strategy == strategy
        assert (node.mixed_precision.param_dtype, node.mixed_precision.reduce_dtype) == (param, reduce)
        assert node.mixed_precision.buffer_dtype == buffer


def test_default_has_no_unexpected_keys() -> None:
    def leaves(cfg, prefix=""):
        for k, v in cfg.items():
            if OmegaConf.is_dict(v):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    precision_leaves = {
        f"compute_precision.{p}.{leaf}"
        for p in PRECISION
        for leaf in ("sharding_strategy", *(f"mixed_precision.{d}_dtype" for d in ("param", "reduce", "buffer")))
    }
    assert set(leaves(dinov2_default_config)) == set(REFERENCE_DEFAULTS) | set(NEW_KEYS) | precision_leaves


def test_every_packaged_config_merges_with_the_defaults() -> None:
    names = [n for n in available_configs() if n != "ssl_default_config"]
    assert len(names) == 14  # 6 train presets + 8 eval architectures
    for name in names:
        cfg = load_and_merge_config(name)
        assert cfg.crops.global_crops_size % cfg.student.patch_size == 0, name
        assert cfg.crops.local_crops_size % cfg.student.patch_size == 0, name


def test_vitl16_short_is_the_default_recipe_with_chunks() -> None:
    assert OmegaConf.to_object(load_config("train/vitl16_short")) == {
        "train": {"dataset_path": "ImageNet:split=TRAIN", "batch_size_per_gpu": 64},
        "student": {"block_chunks": 4},
    }


def test_vitl14_and_vitg14_presets() -> None:
    l14 = OmegaConf.to_object(load_config("train/vitl14"))
    assert l14 == {
        "dino": {"head_n_prototypes": 131072, "head_bottleneck_dim": 384},
        "ibot": {"separate_head": True, "head_n_prototypes": 131072},
        "train": {"batch_size_per_gpu": 32, "dataset_path": "ImageNet22k", "centering": "sinkhorn_knopp"},
        "student": {
            "arch": "vit_large",
            "patch_size": 14,
            "drop_path_rate": 0.4,
            "ffn_layer": "swiglufused",
            "block_chunks": 4,
        },
        "teacher": {"momentum_teacher": 0.994},
        "optim": {
            "epochs": 500,
            "weight_decay_end": 0.2,
            "base_lr": 2.0e-04,
            "warmup_epochs": 80,
            "layerwise_decay": 1.0,
        },
        "crops": {"local_crops_size": 98},
    }
    g14 = OmegaConf.to_object(load_config("train/vitg14"))
    l14["train"]["batch_size_per_gpu"] = 12
    l14["student"]["arch"] = "vit_giant2"
    assert g14 == l14


@pytest.mark.parametrize("size", ["s", "b", "l", "g"])
@pytest.mark.parametrize("reg", [False, True])
def test_eval_configs(size: str, reg: bool) -> None:
    arch = {"s": "vit_small", "b": "vit_base", "l": "vit_large", "g": "vit_giant2"}[size]
    cfg = load_and_merge_config(f"eval/vit{size}14{'_reg4' if reg else ''}_pretrain")
    assert (cfg.student.arch, cfg.student.patch_size) == (arch, 14)
    assert (cfg.crops.global_crops_size, cfg.crops.local_crops_size) == (518, 98)
    assert cfg.student.ffn_layer == ("swiglufused" if size == "g" else "mlp")
    assert cfg.student.block_chunks == 0
    if reg:
        assert (cfg.student.num_register_tokens, cfg.student.interpolate_antialias) == (4, True)
        assert cfg.student.interpolate_offset == 0.0
    else:
        assert (cfg.student.num_register_tokens, cfg.student.interpolate_antialias) == (0, False)
        assert cfg.student.interpolate_offset == 0.1


def test_cpu_preset_is_tiny_and_fp32() -> None:
    cfg = load_and_merge_config("train/vit_tiny_cpu")
    assert cfg.student.arch == "vit_tiny"
    assert cfg.compute_precision.grad_scaler is False
    for who in ("teacher", "student"):
        for part in ("backbone", "dino_head", "ibot_head"):
            mp = cfg.compute_precision[who][part].mixed_precision
            assert (mp.param_dtype, mp.reduce_dtype, mp.buffer_dtype) == ("fp32", "fp32", "fp32")
    assert 56 <= cfg.crops.global_crops_size <= 64 and 28 <= cfg.crops.local_crops_size <= 32
    assert (cfg.crops.local_crops_number, cfg.train.batch_size_per_gpu, cfg.train.num_workers) == (2, 8, 2)
    assert (cfg.dino.head_n_prototypes, cfg.dino.head_hidden_dim, cfg.dino.head_bottleneck_dim) == (1024, 256, 64)
    total_iters = cfg.optim.epochs * cfg.train.OFFICIAL_EPOCH_LENGTH
    assert total_iters <= 200
    for key in ("warmup_epochs", "freeze_last_layer_epochs"):
        assert cfg.optim[key] < cfg.optim.epochs
    assert cfg.teacher.warmup_teacher_temp_epochs < cfg.optim.epochs
    assert 0 < cfg.train.saveckp_freq <= total_iters
    assert 0 < cfg.evaluation.eval_period_iterations <= total_iters


def test_one_gpu_preset() -> None:
    cfg = load_and_merge_config("train/vits14_1gpu")
    assert (cfg.student.arch, cfg.student.patch_size, cfg.train.batch_size_per_gpu) == ("vit_small", 14, 64)
    assert cfg.compute_precision.grad_scaler is False  # bf16 needs no loss scaling
    assert cfg.compute_precision.student.backbone.mixed_precision.param_dtype == "bf16"
    assert cfg.dino.head_n_prototypes == cfg.ibot.head_n_prototypes == 16384


def test_load_config_unknown_name_lists_available() -> None:
    with pytest.raises(FileNotFoundError, match="train/vitl14"):
        load_config("train/vitl99")


def test_merged_config_is_strict() -> None:
    cfg = load_and_merge_config("train/vitl14")
    with pytest.raises(Exception, match="batchsize"):
        cfg.train.batchsize = 3


@pytest.mark.parametrize("name", [n for n in available_configs() if n != "ssl_default_config"])
def test_every_packaged_config_builds_its_model(name: str) -> None:
    cfg = load_and_merge_config(name)
    with torch.device("meta"):  # shapes only
        student, teacher, embed_dim = build_model_from_cfg(cfg)
    grid = cfg.crops.global_crops_size // cfg.student.patch_size
    n_tokens = 1 + grid * grid
    assert student.pos_embed.shape[1] == teacher.pos_embed.shape[1] == n_tokens
    arch_depth = {"vit_tiny": 12, "vit_small": 12, "vit_base": 12, "vit_large": 24, "vit_giant2": 40}
    assert student.n_blocks == teacher.n_blocks == (cfg.student.depth or arch_depth[cfg.student.arch])
    assert (
        embed_dim
        == {"vit_tiny": 192, "vit_small": 384, "vit_base": 768, "vit_large": 1024, "vit_giant2": 1536}[cfg.student.arch]
    )
