"""Config assembly: precedence, strictness, the sqrt scaling rule and config.yaml round trip."""

import argparse
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dinov2 import distributed
from dinov2.configs import dinov2_default_config
from dinov2.utils.config import apply_scaling_rules_to_cfg, get_cfg_from_args, write_config


def _args(config_file: str | Path = "", opts: list[str] | None = None, output_dir: str = "out") -> argparse.Namespace:
    return argparse.Namespace(config_file=str(config_file), opts=opts or [], output_dir=output_dir)


def test_precedence_defaults_file_cli(tmp_path: Path) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("train:\n  batch_size_per_gpu: 16\n  num_workers: 3\noptim:\n  epochs: 7\n")
    cfg = get_cfg_from_args(_args(cfg_file, ["train.batch_size_per_gpu=32", "crops.global_crops_scale=[0.5,1.0]"]))
    assert cfg.train.batch_size_per_gpu == 32  # CLI beats file
    assert cfg.train.num_workers == 3  # file beats defaults
    assert cfg.optim.epochs == 7
    assert list(cfg.crops.global_crops_scale) == [0.5, 1.0]
    assert cfg.optim.base_lr == dinov2_default_config.optim.base_lr  # untouched default
    assert dinov2_default_config.train.batch_size_per_gpu == 64  # the module-level defaults are not mutated


def test_empty_config_file_gives_defaults(tmp_path: Path) -> None:
    cfg = get_cfg_from_args(_args("", output_dir=str(tmp_path / "o")))
    expected = OmegaConf.to_container(dinov2_default_config)
    expected["train"]["output_dir"] = str(tmp_path / "o")
    assert OmegaConf.to_container(cfg) == expected


def test_output_dir_is_absolute_and_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = _args(opts=["train.output_dir=/elsewhere"], output_dir="rel")
    cfg = get_cfg_from_args(args)
    assert cfg.train.output_dir == str(tmp_path / "rel") == args.output_dir


def test_packaged_preset_name_is_accepted() -> None:
    cfg = get_cfg_from_args(_args("train/vitl14"))
    assert cfg.train.centering == "sinkhorn_knopp" and cfg.student.patch_size == 14


def test_unknown_key_on_command_line_names_key_and_suggestions() -> None:
    with pytest.raises(ValueError, match=r"optim\.base_lrr; did you mean optim\.base_lr"):
        get_cfg_from_args(_args(opts=["optim.base_lrr=0.1"]))
    with pytest.raises(ValueError, match=r"train\.lr; did you mean optim\.lr"):
        get_cfg_from_args(_args(opts=["train.lr=0.1"]))


def test_unknown_key_in_file_names_file(tmp_path: Path) -> None:
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("student:\n  archh: vit_small\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*\n.*student\.archh; did you mean student\.arch"):
        get_cfg_from_args(_args(cfg_file))


def test_malformed_override_and_missing_file() -> None:
    with pytest.raises(ValueError, match="key.sub=value"):
        get_cfg_from_args(_args(opts=["optim.lr"]))
    with pytest.raises(FileNotFoundError, match="train/vitl14"):
        get_cfg_from_args(_args("no/such/file.yaml"))


def test_result_is_struct() -> None:
    cfg = get_cfg_from_args(_args())
    with pytest.raises(Exception, match="not_a_key"):
        _ = cfg.train.not_a_key


def test_sqrt_scaling_rule_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "get_global_size", lambda: 32)
    cfg = get_cfg_from_args(_args(opts=["train.batch_size_per_gpu=64"]))
    apply_scaling_rules_to_cfg(cfg)
    assert cfg.optim.lr == pytest.approx(0.004 * math.sqrt(64 * 32 / 1024))
    assert cfg.optim.lr == pytest.approx(0.00566, abs=1e-5)


def test_sqrt_scaling_rule_single_process() -> None:
    cfg = get_cfg_from_args(_args(opts=["train.batch_size_per_gpu=256", "optim.base_lr=0.002"]))
    assert apply_scaling_rules_to_cfg(cfg).optim.lr == pytest.approx(0.001)


def test_unsupported_scaling_rule() -> None:
    cfg = get_cfg_from_args(_args(opts=["optim.scaling_rule=linear_wrt_256"]))
    with pytest.raises(ValueError, match="linear_wrt_256.*sqrt_wrt_1024"):
        apply_scaling_rules_to_cfg(cfg)


def test_write_config_round_trip(tmp_path: Path) -> None:
    cfg = get_cfg_from_args(_args(opts=["optim.epochs=3"], output_dir=str(tmp_path)))
    apply_scaling_rules_to_cfg(cfg)
    path = write_config(cfg, tmp_path)
    assert path == str(tmp_path / "config.yaml")
    reloaded = OmegaConf.load(path)
    assert OmegaConf.to_container(reloaded) == OmegaConf.to_container(cfg)
    assert reloaded.optim.lr == pytest.approx(0.004 * math.sqrt(64 / 1024))
    assert list(tmp_path.iterdir()) == [tmp_path / "config.yaml"]  # no temporary file left behind
    # the saved config reproduces the run when given back as --config-file
    again = get_cfg_from_args(_args(path, output_dir=str(tmp_path)))
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
