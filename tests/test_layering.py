"""The package's layers import downwards only: the building blocks (``utils``, ``layers``, ``models``, ``data`` and
what they stand on) never import the programs built from them (``hub``, ``train``, ``eval``, ``run``, ``tools``),
not even inside a function."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dinov2"
LOWER = ("utils", "layers", "models", "data", "loss", "logging", "distributed", "fsdp", "configs")
UPPER = ("hub", "train", "eval", "run", "tools")


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_never_import_upper_ones(layer: str) -> None:
    upward = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for line, module in _imported_modules(path)
        if any(module == f"dinov2.{up}" or module.startswith(f"dinov2.{up}.") for up in UPPER)
    ]
    assert not upward, "\n".join(upward)


def test_the_walk_sees_imports() -> None:
    """The walk resolves absolute and relative imports (so that a clean result means something)."""
    modules = {module for _, module in _imported_modules(PACKAGE / "distributed" / "process_group.py")}
    assert "dinov2.distributed.state" in modules and "dinov2.distributed.devices._backend_for" in modules
    modules = {module for _, module in _imported_modules(PACKAGE / "train" / "train.py")}
    assert "dinov2.data.ssl_loader" in modules
