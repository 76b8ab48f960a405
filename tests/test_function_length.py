"""Functions stay short enough to read in one screen: at most 60 lines of code after the signature and docstring.
Signatures are not counted: the official public functions keep their long keyword lists (one per line)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dinov2"
MAX_CODE_LINES = 60


def _code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = function.body
    has_docstring = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
    if has_docstring and len(body) > 1:
        body = body[1:]
    return function.end_lineno - body[0].lineno + 1


def _long_functions(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _code_lines(node) > MAX_CODE_LINES:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({_code_lines(node)} lines)")
    return found


def test_no_function_of_the_package_has_more_than_60_lines_of_code():
    assert _long_functions(PACKAGE) == []


def test_the_check_sees_a_long_function(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_CODE_LINES + 1))
    (package / "long.py").write_text(f'def too_long():\n    """Doc."""\n{body}\n\n\ndef short():\n    return 1\n')
    assert _long_functions(package) == [f"pkg/long.py:1 too_long ({MAX_CODE_LINES + 1} lines)"]
