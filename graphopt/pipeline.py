"""Pipeline strings: ``"zero-weight-elimination,weight-clustering{clusters=16,per_channel=true}"`` → pass instances.

Option values are converted with the types declared on each pass's ``Options`` dataclass, so the same text works
on the command line and in the Python API. A pipeline may also be a file (``pipeline_file``): TOML, or a JSON
report of an earlier run, each holding a ``pipeline`` list of ``{name, options}`` tables, the schema the report
writes; its values go through the same conversion.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the backport
    import tomli as tomllib

from graphopt.errors import PipelineError
from graphopt.pass_base import PassBase
from graphopt.registry import pass_class

__all__ = [
    "MAX_PIPELINE_FILE_BYTES",
    "PassSpec",
    "build_pipeline",
    "describe_pipeline",
    "named_file",
    "option_choices",
    "option_fields",
    "option_text",
    "option_type",
    "parse_pipeline",
    "pipeline_file",
]

MAX_PIPELINE_FILE_BYTES = 64 << 20
"""A TOML pipeline is a few lines and a report's JSON rarely reaches a few MB (a unit per layer per pass); a file
larger than this is refused before it is read."""

_ITEM = re.compile(r"^\s*(?P<name>[A-Za-z0-9_.-]+)\s*(?:\{(?P<options>[^{}]*)\})?\s*$")


@dataclass(frozen=True)
class PassSpec:
    """One pipeline item: a pass name and its options as text."""

    name: str
    options: Mapping[str, str]


def parse_pipeline(text: str) -> list[PassSpec]:
    """Split ``text`` at top-level commas and parse each ``name{key=value,...}`` item."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise PipelineError(f"unbalanced braces in pipeline '{text}'")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise PipelineError(f"unbalanced braces in pipeline '{text}'")
    items.append(current)
    specs = []
    for item in items:
        match = _ITEM.match(item)
        if not match:
            raise PipelineError(f"cannot parse pipeline item '{item.strip()}' (expected name or name{{key=value}})")
        options: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in (match["options"] or "").split(","))):
            key, sep, value = pair.partition("=")
            if not sep:
                raise PipelineError(f"option '{pair}' of pass '{match['name']}' needs a value (key=value)")
            options[key.strip()] = value.strip()
        specs.append(PassSpec(match["name"], options))
    return specs


def option_fields(cls: type[PassBase]) -> list[tuple[dataclasses.Field[Any], Any]]:
    """The pass's options as (field, resolved type) pairs."""
    hints = typing.get_type_hints(cls.Options)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls.Options)]


def option_type(kind: Any) -> str:
    """An option's type as a user writes it: ``int``, ``float | None``, ``tuple of float``, ``choice``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else option_type(a) for a in args)
    if origin is typing.Literal:
        return "choice"
    if origin is tuple:
        return f"tuple of {option_type(args[0])}" if args else "tuple"
    return getattr(kind, "__name__", str(kind))


def option_choices(kind: Any) -> tuple[str, ...]:
    """The values a choice option (a ``Literal``, possibly optional) allows; empty for any other type."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return tuple(c for a in args for c in option_choices(a))
    return tuple(map(str, args)) if origin is typing.Literal else ()


def pipeline_file(path: str | Path) -> list[PassSpec]:
    """The pipeline in a ``.toml`` file or a ``.json`` report: a ``pipeline`` list of tables, each with a ``name``
    and optional ``options``; ``PipelineError`` naming what is wrong otherwise."""
    path = Path(path)
    try:
        if not path.is_file():
            raise PipelineError(f"pipeline file {path} is not a regular file")
        if path.stat().st_size > MAX_PIPELINE_FILE_BYTES:
            raise PipelineError(f"pipeline file {path} is over {MAX_PIPELINE_FILE_BYTES >> 20} MB")
        text = path.read_text(encoding="utf-8")
        document = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise PipelineError(f"cannot read pipeline file {path}: {e}") from e
    items = document.get("pipeline") if isinstance(document, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise PipelineError(f"pipeline file {path} needs a 'pipeline' list of tables with a name and options")
    specs = []
    for item in items:
        name, options = item.get("name"), item.get("options", {})
        if not isinstance(name, str) or not isinstance(options, dict) or set(item) - {"name", "options"}:
            raise PipelineError(f"pipeline file {path}: each entry has a 'name' (text) and 'options' (a table), "
                                f"got {sorted(item)}")
        specs.append(PassSpec(name, {str(k): option_text(v) for k, v in options.items()}))
    return specs


def named_file(passes: object) -> Path | None:
    """The pipeline file ``passes`` names (a ``Path``, or text ending in ``.toml`` or ``.json``), if it names one."""
    if isinstance(passes, Path):
        return passes
    if isinstance(passes, str) and passes.strip().endswith((".toml", ".json")):
        return Path(passes.strip())
    return None


def build_pipeline(passes: str | Path | Sequence[str | PassBase]) -> list[PassBase]:
    """Instantiate a pipeline given as text, a file (a ``Path``, or text ending in ``.toml`` or ``.json``), or a
    list of pipeline items and pass instances."""
    path = named_file(passes)
    if path is not None:
        return [_instantiate(spec) for spec in pipeline_file(path)]
    items: list[str | PassBase] = list(parse_pipeline(passes)) if isinstance(passes, str) else list(passes)  # type: ignore[arg-type]
    built: list[PassBase] = []
    for item in items:
        if isinstance(item, PassBase):
            built.append(item)
            continue
        for spec in parse_pipeline(item) if isinstance(item, str) else [item]:
            built.append(_instantiate(spec))
    return built


def describe_pipeline(passes: Sequence[PassBase]) -> str:
    """The pipeline string that rebuilds ``passes``: each name with the options that differ from their defaults.

    ``build_pipeline(describe_pipeline(p))`` gives passes with the same options, so a model can carry the pipeline
    that made it (``graphopt validate`` refits it on folds)."""
    items = []
    for pass_ in passes:
        options = [f"{f.name}={option_text(getattr(pass_.options, f.name))}"
                   for f in dataclasses.fields(pass_.Options) if getattr(pass_.options, f.name) != _default(f)]
        items.append(pass_.name + (f"{{{','.join(options)}}}" if options else ""))
    return ",".join(items)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def option_text(value: Any) -> str:
    """An option value as the pipeline syntax writes it (``true``, ``none``, ``0.9;0.75``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ";".join(map(option_text, value))
    return "none" if value is None else str(value)


def _instantiate(spec: PassSpec) -> PassBase:
    cls = pass_class(spec.name)
    fields = {f.name: (f, t) for f, t in option_fields(cls)}
    values = {}
    for key, text in spec.options.items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise PipelineError(f"pass '{spec.name}' has no option '{key}' (options: {known})")
        values[key] = _convert(text, fields[key][1], f"{spec.name}.{key}")
    try:
        return cls(cls.Options(**values))
    except (TypeError, ValueError) as e:
        raise PipelineError(f"bad options for pass '{spec.name}': {e}") from e


def _convert(text: str, kind: Any, where: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", "") and type(None) in args:
            return None
        kind = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Literal:
        if text not in args:
            raise PipelineError(f"{where} must be one of {', '.join(map(str, args))}, not '{text}'")
        return text
    if origin is tuple:
        return tuple(_convert(part, args[0], where) for part in text.split(";") if part)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return kind(text)
    except (TypeError, ValueError) as e:
        raise PipelineError(f"{where} expects {getattr(kind, '__name__', kind)}, got '{text}'") from e
