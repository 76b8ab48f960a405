import os

import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    """Device under test: CPU unless DINOV2_TEST_DEVICE names another (e.g. ``cuda``)."""
    return torch.device(os.environ.get("DINOV2_TEST_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
