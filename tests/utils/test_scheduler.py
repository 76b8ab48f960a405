"""CosineScheduler against the verified example of the spec (section 6.6) and the training schedules' shapes."""

import math

import numpy as np
import pytest

from dinov2.utils.utils import CosineScheduler

VERIFIED = [
    0,
    0,
    0,
    0.25,
    0.5,
    0.75,
    1,
    1,
    0.985,
    0.943,
    0.874,
    0.784,
    0.677,
    0.56,
    0.44,
    0.323,
    0.216,
    0.126,
    0.057,
    0.015,
]


def test_verified_example() -> None:
    s = CosineScheduler(base_value=1, final_value=0, total_iters=20, warmup_iters=5, freeze_iters=2)
    assert len(s) == 20
    np.testing.assert_allclose([s[i] for i in range(20)], VERIFIED, atol=5e-4)


def test_cosine_formula_and_past_the_end() -> None:
    s = CosineScheduler(0.04, 0.4, total_iters=10)  # weight decay goes UP
    expected = [0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * i / 10)) for i in range(10)]
    np.testing.assert_allclose(s.schedule, expected)
    assert s[0] == pytest.approx(0.04)
    assert s[10] == 0.4 and s[10_000] == 0.4


def test_teacher_temperature_schedule_is_pure_linear_warmup() -> None:
    s = CosineScheduler(0.07, 0.07, total_iters=30, warmup_iters=30, start_warmup_value=0.04)
    np.testing.assert_allclose(s.schedule, np.linspace(0.04, 0.07, 30))
    assert s[29] == pytest.approx(0.07) and s[30] == 0.07


def test_schedule_is_mutable_for_last_layer_freeze() -> None:
    s = CosineScheduler(1e-3, 1e-6, total_iters=8, warmup_iters=2)
    s.schedule[:3] = 0
    assert [s[i] for i in range(3)] == [0, 0, 0] and s[3] > 0


def test_invalid_lengths() -> None:
    with pytest.raises(ValueError, match="warmup_iters"):
        CosineScheduler(1, 0, total_iters=5, warmup_iters=6)
    with pytest.raises(ValueError, match=">= 0"):
        CosineScheduler(1, 0, total_iters=-1)
