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


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graphopt_imports(path: Path, modules: set[str]) -> set[str]:
    """The graphopt modules ``path`` imports (``from graphopt import perf`` names the module ``graphopt.perf``),
    ``TYPE_CHECKING`` imports included: a cycle of types is still a cycle to read."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & modules
            found.update(submodules or {node.module})
            if len(submodules) < len(node.names):
                found.add(node.module)
    return found - {_module_name(path)}


def test_the_framework_has_no_import_cycle() -> None:
    paths = {_module_name(p): p for p in (ROOT / "graphopt").rglob("*.py")}
    edges = {name: _graphopt_imports(path, set(paths)) for name, path in paths.items()}
    edges = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in edges.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges[name]):
            assert state.get(target) != 1, " → ".join([*path[path.index(target):], target]) if target in path else target
            if target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_passes_leave_timing_and_the_machine_to_the_framework() -> None:
    """Speed is the manager's gate (``graphopt.gates``) and CPU features reach a pass through its context."""
    forbidden = ("graphopt.perf", "graphopt.openvino", "graphopt.machine", "graphopt.gates")
    for path in (ROOT / "passes").rglob("*.py"):
        used = {n for n in imports(path) if n.startswith(forbidden)}
        assert not used, (path, used)


def test_passes_use_the_graph_toolkit_instead_of_their_own_helpers() -> None:
    """Names, labels, walks into nested graphs and the initializer-input check live once, in ``graphopt.graph``;
    a pass that defines its own (the copies issue 18 removed) would drift from them again."""
    toolkit = {"label", "_label", "fresh", "_fresh", "_subgraphs", "_subgraph_reads", "_reads", "_walk",
               "_subgraph_layers", "_overridable"}
    for path in (ROOT / "passes").rglob("*.py"):
        defined = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
        assert not defined & toolkit, (path, sorted(defined & toolkit))
