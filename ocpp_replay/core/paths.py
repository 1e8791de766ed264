"""Paths into OCPP payloads: ``idTagInfo.expiryDate``, ``meterValue[*].timestamp``, ``$.a[0]``.

Pure. One small syntax is shared by the rules file, the correlation rules and the ``path`` of a
difference in a report, so a path copied from a report can be pasted into a rules file.

    path     := ["$" ["."]] segment ("." segment)*   (the empty path "" or "$" is the payload)
    segment  := key index* | index+
    key      := a JSON object key, or "*" for any key
    index    := "[" digits "]" | "[*]"

Functions here never mutate their input: :func:`rewrite` copies only what it changes and returns
the very same object when nothing changed, so callers can tell cheaply whether anything did.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, Final

from ocpp_replay.errors import ConfigError

__all__ = ["ANY", "DELETE", "Path", "Segment", "find", "format_path", "get", "parse_path", "rewrite"]


class _Any:
    """The wildcard segment: any key of an object or any item of a list."""

    _instance: _Any | None = None

    def __new__(cls) -> _Any:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ANY"


class _Delete:
    """Returned by a :func:`rewrite` callback to drop the value (the key or the list item)."""

    def __repr__(self) -> str:
        return "DELETE"


ANY: Final = _Any()
DELETE: Final = _Delete()

Segment = str | int | _Any
Path = tuple[Segment, ...]

_INDEX = re.compile(r"\[(\d+|\*)\]")
_KEY = re.compile(r"^([^\[\]]*)((?:\[(?:\d+|\*)\])*)$")
_MISSING = object()


def parse_path(text: str) -> Path:
    """Parse a path; raises ConfigError for one that is malformed."""
    body = text.strip()
    if body.startswith("$"):
        body = body[1:]
        if body.startswith("."):
            body = body[1:]
    if not body:
        return ()
    segments: list[Segment] = []
    for part in body.split("."):
        m = _KEY.match(part)
        if m is None or (not m.group(1) and not m.group(2)):
            raise ConfigError(f"bad path {text!r}: cannot read {part!r}")
        key, indexes = m.group(1), m.group(2)
        if key:
            segments.append(ANY if key == "*" else key)
        for idx in _INDEX.findall(indexes):
            segments.append(ANY if idx == "*" else int(idx))
    return tuple(segments)


def format_path(path: Path) -> str:
    """The text of a path, as :func:`parse_path` reads it (``""`` for the whole payload)."""
    out: list[str] = []
    for seg in path:
        if isinstance(seg, _Any):
            out.append("[*]" if out else "*")
        elif isinstance(seg, int):
            out.append(f"[{seg}]")
        else:
            out.append(f".{seg}" if out else seg)
    return "".join(out)


def _children(value: Any, seg: Segment) -> Iterator[tuple[str | int, Any]]:
    if isinstance(seg, _Any):
        if isinstance(value, dict):
            yield from value.items()
        elif isinstance(value, list):
            yield from enumerate(value)
    elif isinstance(seg, int):
        if isinstance(value, list) and 0 <= seg < len(value):
            yield seg, value[seg]
    elif isinstance(value, dict) and seg in value:
        yield seg, value[seg]


def find(value: Any, path: Path) -> list[tuple[tuple[str | int, ...], Any]]:
    """Every (concrete path, value) the path matches, in document order."""
    found: list[tuple[tuple[str | int, ...], Any]] = []

    def walk(node: Any, i: int, at: tuple[str | int, ...]) -> None:
        if i == len(path):
            found.append((at, node))
            return
        for key, child in _children(node, path[i]):
            walk(child, i + 1, (*at, key))

    walk(value, 0, ())
    return found


def get(value: Any, concrete: tuple[str | int, ...], default: Any = None) -> Any:
    """The value at a concrete path (no wildcards), or ``default`` when it is not there."""
    node = value
    for key in concrete:
        if isinstance(node, list):
            if not isinstance(key, int) or not 0 <= key < len(node):
                return default
            node = node[key]
        elif isinstance(node, dict) and isinstance(key, str) and key in node:
            node = node[key]
        else:
            return default
    return node


def rewrite(value: Any, path: Path, fn: Callable[[Any], Any]) -> Any:
    """A copy of ``value`` where ``fn`` replaced each value the path matches.

    ``fn`` may return :data:`DELETE` to drop the value. Returns ``value`` itself when ``fn``
    changed nothing (it returned the same object everywhere).
    """
    if not path:
        return fn(value)
    seg, rest = path[0], path[1:]
    if isinstance(value, dict):
        keys: Any = value.keys() if isinstance(seg, _Any) else ([seg] if seg in value else [])
        changed: dict[Any, Any] | None = None
        for key in list(keys):
            old = value[key]
            new = rewrite(old, rest, fn)
            if new is not old:
                if changed is None:
                    changed = dict(value)
                if new is DELETE:
                    del changed[key]
                else:
                    changed[key] = new
        return value if changed is None else changed
    if isinstance(value, list):
        if isinstance(seg, str):
            return value
        indexes = range(len(value)) if isinstance(seg, _Any) else ([seg] if 0 <= seg < len(value) else [])
        items: list[Any] | None = None
        for idx in indexes:
            old = value[idx]
            new = rewrite(old, rest, fn)
            if new is not old:
                if items is None:
                    items = list(value)
                items[idx] = new
        if items is None:
            return value
        return [item for item in items if item is not DELETE]
    return value


def walk_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """A copy of ``value`` with ``fn`` applied to every string value (keys untouched).

    Returns ``value`` itself when ``fn`` changed no string.
    """
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        changed: dict[str, Any] | None = None
        for key, old in value.items():
            new = walk_strings(old, fn)
            if new is not old:
                if changed is None:
                    changed = dict(value)
                changed[key] = new
        return value if changed is None else changed
    if isinstance(value, list):
        items: list[Any] | None = None
        for idx, old in enumerate(value):
            new = walk_strings(old, fn)
            if new is not old:
                if items is None:
                    items = list(value)
                items[idx] = new
        return value if items is None else items
    return value


def missing() -> object:
    """A sentinel distinct from every JSON value (for lookups where None is a value)."""
    return _MISSING
