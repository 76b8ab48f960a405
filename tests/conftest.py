import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def device() -> torch.device:
    """Device under test: CPU unless DINOV2_TEST_DEVICE names another (e.g. ``cuda``)."""
    return torch.device(os.environ.get("DINOV2_TEST_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """``load_script("name")`` imports ``scripts/name.py`` as a module (``scripts/`` is not a package)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, _SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # so that pickling its functions (process pools) finds this very module
        spec.loader.exec_module(module)
        return module

    return load
