"""The collapse statistics and the monitor's warning: loud on collapsed teachers, quiet on healthy ones."""

import logging
import math

import pytest
import torch
from omegaconf import OmegaConf

from dinov2.configs import dinov2_default_config
from dinov2.train.collapse_monitor import CollapseMonitor, teacher_statistics, uniform_loss_values


def test_statistics_of_an_image_independent_teacher() -> None:
    cls = torch.randn(1, 32).expand(16, 32)  # every image gives the same feature
    logits = torch.randn(1, 64).expand(16, 64)
    targets = torch.full((16, 64), 1 / 64)  # centering made them uniform
    stats = teacher_statistics(cls, logits, targets, center=torch.zeros(1, 64))
    assert float(stats["teacher_cls_std"]) == pytest.approx(0.0, abs=1e-6)
    assert float(stats["teacher_logit_std"]) == pytest.approx(0.0, abs=1e-6)
    assert float(stats["teacher_entropy"]) == pytest.approx(1.0, abs=1e-5)
    assert float(stats["teacher_usage_entropy"]) == pytest.approx(1.0, abs=1e-5)


def test_statistics_of_a_spread_and_sharp_teacher() -> None:
    cls = torch.randn(512, 32)  # random directions: normalised std ~ 1 / sqrt(D) per dimension
    targets = torch.nn.functional.one_hot(torch.arange(512) % 64, 64).float()  # sharp, every prototype used
    stats = teacher_statistics(cls, torch.randn(512, 64), targets, center=None)
    assert 0.8 < float(stats["teacher_cls_std"]) < 1.2
    assert float(stats["teacher_entropy"]) == pytest.approx(0.0, abs=1e-5)
    assert float(stats["teacher_usage_entropy"]) == pytest.approx(1.0, abs=1e-5)
    assert "dino_center_std" not in stats


def test_uniform_values_follow_the_loss_normalisation() -> None:
    cfg = OmegaConf.merge(
        dinov2_default_config, {"dino": {"head_n_prototypes": 1024}, "crops": {"local_crops_number": 4}}
    )
    uniform = uniform_loss_values(cfg)
    assert uniform["dino_global_crops_loss"] == pytest.approx(2 * math.log(1024) / 10)
    assert uniform["dino_local_crops_loss"] == pytest.approx(8 * math.log(1024) / 10)
    assert uniform["ibot_loss"] == pytest.approx(0.5 * math.log(1024))  # half the global crops are masked
    assert "koleo_loss" not in uniform


def _feed(monitor: CollapseMonitor, dino_ratio: float, cls_std: float, iterations: range) -> None:
    for iteration in iterations:
        values = {"dino_global_crops_loss": dino_ratio * monitor.uniform["dino_global_crops_loss"]}
        monitor.update(iteration, {**values, "teacher_cls_std": cls_std})


def _monitor() -> CollapseMonitor:
    return CollapseMonitor({"dino_global_crops_loss": 1.386}, start_iteration=10, patience=20)


def test_warns_once_on_a_sustained_uniform_dino_loss(caplog: pytest.LogCaptureFixture) -> None:
    monitor = _monitor()
    with caplog.at_level(logging.WARNING, logger="dinov2"):
        _feed(monitor, dino_ratio=0.995, cls_std=0.5, iterations=range(0, 200))
    warnings = [r for r in caplog.records if "DINO collapse" in r.getMessage()]
    assert len(warnings) == 1
    assert "student.layerscale" in warnings[0].getMessage() and "teacher.teacher_temp" in warnings[0].getMessage()
    assert monitor.warned


def test_warns_on_image_independent_teacher_features(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dinov2"):
        _feed(_monitor(), dino_ratio=0.5, cls_std=1e-4, iterations=range(0, 100))
    assert any("teacher_cls_std" in r.getMessage() for r in caplog.records)


def test_quiet_on_healthy_runs_warm_up_and_short_dips(caplog: pytest.LogCaptureFixture) -> None:
    monitor = _monitor()
    with caplog.at_level(logging.WARNING, logger="dinov2"):
        _feed(monitor, dino_ratio=1.0, cls_std=0.0, iterations=range(0, 10))  # collapsed, but during warm-up
        _feed(monitor, dino_ratio=0.85, cls_std=0.6, iterations=range(10, 100))  # healthy
        _feed(monitor, dino_ratio=0.99, cls_std=0.6, iterations=range(100, 115))  # shorter than the patience
        _feed(monitor, dino_ratio=0.85, cls_std=0.6, iterations=range(115, 300))
    assert not monitor.warned
    assert not [r for r in caplog.records if "DINO collapse" in r.getMessage()]


def test_update_returns_the_ratios_to_log() -> None:
    ratios = _monitor().update(0, {"dino_global_crops_loss": 0.693})
    assert ratios == {"dino_global_crops_loss_vs_uniform": pytest.approx(0.5)}
