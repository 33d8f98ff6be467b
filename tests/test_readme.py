"""The README's Python examples run as written (against the bundled example, writing into a temp folder)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("index", range(len(python_blocks(ROOT / "README.md"))))
def test_readme_python_examples_run(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    code = python_blocks(ROOT / "README.md")[index].replace("/tmp/", f"{tmp_path}{os.sep}")
    exec(compile(code, f"README.md[python {index}]", "exec"), {})  # noqa: S102 - the README examples are the test
    assert (tmp_path / "out.onnx").exists() and (tmp_path / "out.report.json").exists()


def test_quick_start_has_exactly_two_command_lines() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s+```\n(.*?)```", text, flags=re.DOTALL)
    assert block is not None
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert lines == [
        "pip install . && graphopt optimize examples/digits_cnn.onnx --data examples/digits.npz -o /tmp/out.onnx",
        "pip install '.[test]' && pytest",
    ]
