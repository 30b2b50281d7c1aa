"""How the package is built: testkit stays outside it (docs/architecture.md)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_dicomproxy_module_imports_testkit() -> None:
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "dicomproxy").rglob("*.py")
        if any(name == "testkit" or name.startswith("testkit.") for name in _imported_modules(path))
    )
    assert offenders == []


def test_testkit_is_not_in_the_wheel() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == ["dicomproxy*"]
