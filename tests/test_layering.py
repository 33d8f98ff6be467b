"""Import-direction rules: the framework never imports passes; passes never import the manager, CLI or reports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_framework_never_imports_passes() -> None:
    for path in (ROOT / "graphopt").rglob("*.py"):
        assert not any(n.startswith("graphopt_passes") for n in imports(path)), path


def test_passes_never_import_manager_cli_or_report() -> None:
    forbidden = ("graphopt.cli", "graphopt.api", "graphopt.manager", "graphopt.report", "graphopt.instrument")
    for path in (ROOT / "passes").rglob("*.py"):
        assert not any(n.startswith(forbidden) for n in imports(path)), path


def test_manager_and_pass_base_name_no_pass() -> None:
    for name in ("manager.py", "pass_base.py", "registry.py", "pipeline.py"):
        source = (ROOT / "graphopt" / name).read_text()
        assert "zero_weight" not in source and "ZeroWeight" not in source


def test_math_modules_do_not_import_onnx() -> None:
    """Pure maths imports numpy and other maths modules only: no ONNX, no framework, no graph surgery."""
    for path in (ROOT / "passes" / "_math").rglob("*.py"):
        outside = [n for n in imports(path) if not n.startswith("graphopt_passes._math")]
        assert not any(n.startswith(("onnx", "graphopt")) for n in outside), path


def test_validation_sections_know_nothing_of_the_cli_api_or_renderings() -> None:
    """Sections measure and return data; the API orchestrates them and the report package renders them."""
    forbidden = ("graphopt.cli", "graphopt.api", "graphopt.report", "graphopt_passes")
    for path in (ROOT / "graphopt" / "validation").rglob("*.py"):
        assert not any(n.startswith(forbidden) for n in imports(path)), path
