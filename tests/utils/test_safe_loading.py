"""Walks the package's source for every call that reads a serialised file, so that no unsafe one slips in:
``torch.load`` only in the two loading modules and always with ``weights_only=True``; no ``pickle.load(s)``;
``np.load`` never with ``allow_pickle=True``; DCP reads only through the restricted reader; fvcore's checkpointer
only through the weights-only subclass."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dinov2"
TORCH_LOAD_MODULES = {"models/weights.py", "fsdp/checkpointer.py"}


def _calls(path: Path) -> list[tuple[str, ast.Call]]:
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            calls.append((ast.unparse(node.func), node))
    return calls


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name:
            return ast.literal_eval(keyword.value) if isinstance(keyword.value, ast.Constant) else "<expr>"
    return None


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_unsafe_load_call(path: Path) -> None:
    module = str(path.relative_to(PACKAGE))
    problems = []
    for name, call in _calls(path):
        where = f"{module}:{call.lineno} {name}"
        if name in ("torch.load", "torch.hub.load_state_dict_from_url"):
            if module not in TORCH_LOAD_MODULES:
                problems.append(f"{where}: read weights through dinov2.models.weights instead")
            elif _keyword(call, "weights_only") is not True:
                problems.append(f"{where}: without weights_only=True")
        elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cloudpickle.load", "joblib.load"):
            problems.append(f"{where}: unpickling can run code")
        elif name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") not in (None, False):
            problems.append(f"{where}: allow_pickle")
        elif name in ("dcp.load", "torch.distributed.checkpoint.load") and "_SafeReader" not in ast.unparse(call):
            problems.append(f"{where}: DCP metadata must go through _SafeReader")
        elif name in ("fvcore_checkpoint.Checkpointer", "fvcore.common.checkpoint.Checkpointer"):
            problems.append(f"{where}: use the weights-only subclass")
    assert not problems, "\n".join(problems)


def test_the_walk_sees_the_loading_modules() -> None:
    """The walk finds the load calls that are there (so that an empty walk cannot pass)."""
    names = [name for name, _ in _calls(PACKAGE / "models" / "weights.py")]
    assert "torch.load" in names
    names = [name for name, _ in _calls(PACKAGE / "fsdp" / "checkpointer.py")]
    assert "dcp.load" in names and "torch.load" in names
