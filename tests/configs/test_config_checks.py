import argparse
import re

import pytest
from omegaconf import OmegaConf

from dinov2.configs import load_and_merge_config
from dinov2.errors import ConfigError
from dinov2.utils.config import get_cfg_from_args


def _cfg(*opts: str):
    return get_cfg_from_args(argparse.Namespace(config_file="train/vit_tiny_cpu", opts=list(opts), output_dir=""))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.epochs=abc", r"optim\.epochs='abc' is a string; expected an integer"),
        ("optim.base_lr=fast", r"optim\.base_lr='fast' is a string; expected a number"),
        ("optim.epochs=2.5", r"optim\.epochs=2\.5 is a number; expected an integer"),
        ("train.compile=maybe", r"train\.compile='maybe' is a string; expected a boolean"),
        ("train.batch_size_per_gpu=true", r"train\.batch_size_per_gpu=True is a boolean"),
        ("dino=5", r"dino=5 is an integer; expected a section"),
        ("crops.global_crops_scale=[a,1.0]", r"crops\.global_crops_scale=\['a', 1\.0\]: its items must be numbers"),
        ("crops.global_crops_scale=0.5", r"crops\.global_crops_scale=0\.5 is a number; expected a list"),
    ],
)
def test_wrong_types_name_the_key_the_value_and_the_type(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        _cfg(override)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.epochs=-1", r"optim\.epochs=-1 must be >= 1"),
        ("train.batch_size_per_gpu=0", r"train\.batch_size_per_gpu=0 must be >= 1"),
        ("optim.base_lr=-0.1", r"optim\.base_lr=-0\.1 must be >= 0"),
        ("teacher.teacher_temp=0", r"teacher\.teacher_temp=0 must be > 0"),
        ("teacher.momentum_teacher=1.5", r"teacher\.momentum_teacher=1\.5 must be in \[0, 1\]"),
        ("crops.local_crops_number=-2", r"crops\.local_crops_number=-2 must be >= 0"),
    ],
)
def test_out_of_range_values_are_refused(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        _cfg(override)


def test_every_wrong_value_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as error:
        _cfg("optim.epochs=0", "train.batch_size_per_gpu=0")
    assert "optim.epochs" in str(error.value) and "train.batch_size_per_gpu" in str(error.value)


@pytest.mark.parametrize(
    "override",
    [
        "teacher.final_momentum_teacher=0.999",  # a float where the default is written 1.0
        "optim.base_lr=1",  # an integer is a number
        "train.dataset_path=123",  # a name made of digits is still a string
        "crops.global_crops_scale=[0.3,1]",
        "student.pretrained_weights=null",
        "train.saveckp_freq=0",  # 0 = only at the end
    ],
)
def test_values_of_the_right_kind_pass(override: str) -> None:
    _cfg(override)


def test_a_config_file_is_checked_too(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    OmegaConf.save(OmegaConf.create({"optim": {"epochs": "ten"}}), path)
    with pytest.raises(ConfigError, match=rf"in config file '{re.escape(str(path))}':\n  optim\.epochs='ten'"):
        get_cfg_from_args(argparse.Namespace(config_file=str(path), opts=[], output_dir=""))


def test_packaged_configs_pass_the_checks() -> None:
    load_and_merge_config("train/vitl14")
    load_and_merge_config("train/small_data")


def test_types_follow_the_defaults_not_a_config_file(tmp_path) -> None:
    """A config file (e.g. a copy of the reference's) writing 1 where the default is 1.0 does not forbid 0.9995."""
    path = tmp_path / "reference_like.yaml"
    OmegaConf.save(OmegaConf.create({"teacher": {"final_momentum_teacher": 1}, "optim": {"clip_grad": 3}}), path)
    args = argparse.Namespace(config_file=str(path), opts=["teacher.final_momentum_teacher=0.9995"], output_dir="")
    assert get_cfg_from_args(args).teacher.final_momentum_teacher == 0.9995


def test_ranges_are_checked_once_on_the_result(tmp_path) -> None:
    path = tmp_path / "zero_epochs.yaml"
    OmegaConf.save(OmegaConf.create({"optim": {"epochs": 0}}), path)
    with pytest.raises(ConfigError, match=r"optim\.epochs=0 must be >= 1"):
        get_cfg_from_args(argparse.Namespace(config_file=str(path), opts=[], output_dir=""))
    fixed = get_cfg_from_args(argparse.Namespace(config_file=str(path), opts=["optim.epochs=3"], output_dir=""))
    assert fixed.optim.epochs == 3


@pytest.mark.parametrize(
    "override",
    ["train.max_to_keep=0", "evaluation.online_knn.max_train_samples=0", "evaluation.online_knn.max_val_samples=-1"],
)
def test_documented_zero_meanings_pass(override: str) -> None:
    _cfg(override)  # 0 keeps every checkpoint; <= 0 uses the whole set
