"""Read YAML once, at the edge, and turn pydantic errors into one line naming file, key and line.

`load_model(Model, path)` is the only way user YAML enters the program: it returns a validated,
typed object or raises MapleZooError("sweeps/x.yaml:12: search.lr: ...").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from .errors import MapleZooError

M = TypeVar("M", bound=pydantic.BaseModel)


class LineMap:
    """Key path -> 1-based line number, built from the YAML node tree."""

    def __init__(self, node: yaml.Node | None):
        self.lines: dict[tuple, int] = {}
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = path + (key.value,)
                self.lines[child] = key.start_mark.line + 1
                self._walk(value, child)
                self.lines[child] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                self._walk(value, path + (i,))

    def line(self, path: tuple) -> int | None:
        """The line of the longest prefix of `path` that exists in the file."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


def read_yaml(path: str | Path) -> tuple[Any, LineMap]:
    path = Path(path)
    if not path.is_file():
        raise MapleZooError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MapleZooError(f"{path}{where}: malformed YAML: {problem}") from None
    return data, LineMap(node)


def format_error(exc: pydantic.ValidationError, source: str, lines: LineMap | None, prefix: tuple = ()) -> str:
    """First pydantic error as 'source:line: key.path: message' (plus a count of the others)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = prefix + tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = ".".join(str(p) for p in path).replace("--.", "--") or "<top>"
    line = lines.line(path) if lines else None
    where = f"{source}:{line}" if line else source
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{where}: {key}: {msg}{more}"


def validate(model: type[M], data: Any, source: str, lines: LineMap | None = None, prefix: tuple = ()) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise MapleZooError(format_error(exc, source, lines, prefix)) from None


def apply_overrides(data: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply `a.b.c=value` overrides; values are parsed as YAML scalars (so 0.1, true, [1,2] work)."""
    for item in overrides:
        if "=" not in item:
            raise MapleZooError(f"{source} '{item}': expected key=value")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise MapleZooError(f"{source} '{item}': empty key")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise MapleZooError(f"{source} '{item}': value is not valid YAML") from None
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if isinstance(child, str) and p == "method":  # `method: maple` shorthand
                child = {"name": child}
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise MapleZooError(f"{source} '{item}': '{p}' is not a mapping")
            node[p] = child
            node = child
        node[parts[-1]] = value
    return data


def read_mapping(path: str | Path, overrides: list[str] | None = None) -> tuple[dict, LineMap]:
    """A YAML file whose top level is a mapping (an empty file is an empty one), with --set overrides applied."""
    data, lines = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MapleZooError(f"{path}:1: expected a mapping at the top level")
    if overrides:
        data = apply_overrides(data, overrides)
    return data, lines


def load_model(model: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    data, lines = read_mapping(path, overrides)
    return validate(model, data, str(path), lines)
