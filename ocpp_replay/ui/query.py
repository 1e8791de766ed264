"""The UI's filter expressions over frames, compiled to an SQL condition. Pure (SQL text only).

A filter is terms; terms side by side must all hold, ``or`` between groups offers
alternatives, ``-`` or ``not`` negates a term, parentheses group::

    action=Authorize                      the frame's action (results carry their CALL's action)
    dir=charger  dir=csms                 who sent it (also to_csms / to_cp)
    type=call  type=result  type=error    the message type (2, 3, 4; invalid: not OCPP-J)
    id=42                                 the unique id
    payload.idTag=ACE0177305              a value in the payload (``$.`` works as ``payload.``)
    payload.meterValue[0].sampledValue[1].value~15.6     ~ : contains; != : differs
    Faulted   "a phrase"                  text anywhere in the raw frame (case-insensitive)
    action=StatusNotification (payload.status=Faulted or payload.errorCode!=NoError)

:func:`compile_filter` turns the text into ``(sql, params)`` over a frames table aliased ``f``.
Bad filters raise :class:`~ocpp_replay.errors.ConfigError` with a one-line reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ocpp_replay.core.paths import parse_path
from ocpp_replay.errors import ConfigError

__all__ = ["compile_filter"]

MAX_FILTER = 2000  # characters

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<open>\()|(?P<close>\))|
      (?P<quoted>"(?:[^"\\]|\\.)*")|
      (?P<term>[^\s()"]+(?:"(?:[^"\\]|\\.)*")?)
    )""",
    re.VERBOSE,
)
_OP = re.compile(r"^([A-Za-z_$][^=!~<>]*?)(=|!=|~)(.*)$", re.DOTALL)

_DIRECTIONS = {
    "charger": "to_csms",
    "cp": "to_csms",
    "to_csms": "to_csms",
    "csms": "to_cp",
    "backend": "to_cp",
    "to_cp": "to_cp",
}
_TYPES = {"call": 2, "2": 2, "result": 3, "callresult": 3, "3": 3, "error": 4, "callerror": 4, "4": 4}
# Where the payload sits in each message type: CALL [2,id,action,p], CALLRESULT [3,id,p],
# CALLERROR [4,id,code,description,details].
_PAYLOAD = (
    "(CASE WHEN f.message_type IN (2,3,4) AND json_valid(f.raw) THEN json_extract(f.raw, "
    "(CASE f.message_type WHEN 2 THEN '$[3]' WHEN 3 THEN '$[2]' ELSE '$[4]' END) || ?) END)"
)


@dataclass(frozen=True, slots=True)
class _Sql:
    text: str
    params: tuple[Any, ...]


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        body = text[1:-1]
        return re.sub(r"\\(.)", r"\1", body, flags=re.DOTALL)
    return text


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ConfigError(f"filter: cannot read {text[pos:].strip()[:40]!r} (an unclosed quote?)")
        kind = m.lastgroup or "term"
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _json_path(path_text: str) -> str:
    """A payload path (core.paths syntax) as an SQLite JSON path suffix: ``."a"."b"[0]``."""
    if not path_text:
        raise ConfigError("filter: payload path missing after 'payload.'")
    try:
        path = parse_path(path_text)
    except Exception as exc:
        raise ConfigError(f"filter: bad payload path {path_text!r}") from exc
    out = []
    for seg in path:
        if isinstance(seg, int):
            out.append(f"[{seg}]")
        elif isinstance(seg, str):
            if '"' in seg or "\\" in seg:
                raise ConfigError(f"filter: payload path {path_text!r}: quotes are not allowed in keys")
            out.append(f'."{seg}"')
        else:
            raise ConfigError(f"filter: payload path {path_text!r}: wildcards are not supported here")
    return "".join(out)


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def _compare(column: str, params: tuple[Any, ...], op: str, value: str) -> _Sql:
    """COLUMN (an SQL expression taking PARAMS) against VALUE with OP."""
    if op == "~":
        return _Sql(f"instr(lower(CAST({column} AS TEXT)), lower(?)) > 0", (*params, value))
    number = _number(value)
    if value in ("true", "false"):
        cond = _Sql(f"{column} = ?", (*params, 1 if value == "true" else 0))
    elif value == "null":
        cond = _Sql(f"{column} IS NULL", params)
    elif number is not None:
        cond = _Sql(f"({column} = ? OR {column} = ?)", (*params, number, *params, value))
    else:
        cond = _Sql(f"{column} = ?", (*params, value))
    if op == "!=":
        return _Sql(f"coalesce(NOT ({cond.text}), 1)", cond.params)
    return cond


def _term(text: str) -> _Sql:
    m = _OP.match(text)
    if m is None:
        return _Sql("instr(lower(f.raw), lower(?)) > 0", (_unquote(text),))
    key, op, value = m.group(1), m.group(2), _unquote(m.group(3))
    low = key.lower()
    if low == "action":
        return _compare("f.action", (), op, value)
    if low in ("dir", "direction", "from"):
        d = _DIRECTIONS.get(value.lower())
        if d is None or op == "~":
            raise ConfigError(f"filter: {key} takes charger or csms (to_csms, to_cp), not {value!r}")
        return _Sql("f.direction = ?" if op == "=" else "f.direction != ?", (d,))
    if low == "type":
        if value.lower() == "invalid":
            return _Sql("f.message_type IS NULL" if op == "=" else "f.message_type IS NOT NULL", ())
        t = _TYPES.get(value.lower())
        if t is None or op == "~":
            raise ConfigError(f"filter: type takes call, result, error or invalid, not {value!r}")
        return _Sql("f.message_type = ?" if op == "=" else "coalesce(f.message_type != ?, 1)", (t,))
    if low in ("id", "uid", "unique_id"):
        return _compare("f.unique_id", (), op, value)
    if low.startswith("payload.") or low.startswith("$."):
        path = key.split(".", 1)[1]
        return _compare(_PAYLOAD, (_json_path(path),), op, value)
    raise ConfigError(
        f"filter: unknown key {key!r} (action, dir, type, id, payload.<path>; or plain text to search)"
    )


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def expr(self) -> _Sql:
        parts = [self.conj()]
        while (t := self.peek()) is not None and t[0] == "term" and t[1].lower() in ("or", "|"):
            self.i += 1
            parts.append(self.conj())
        if len(parts) == 1:
            return parts[0]
        return _Sql("(" + " OR ".join(p.text for p in parts) + ")", tuple(x for p in parts for x in p.params))

    def conj(self) -> _Sql:
        parts: list[_Sql] = []
        while (t := self.peek()) is not None and t[0] != "close":
            if t[0] == "term" and t[1].lower() in ("or", "|"):
                break
            parts.append(self.unary())
        if not parts:
            raise ConfigError("filter: a term is missing (before ')' or around 'or')")
        if len(parts) == 1:
            return parts[0]
        return _Sql(
            "(" + " AND ".join(p.text for p in parts) + ")", tuple(x for p in parts for x in p.params)
        )

    def unary(self) -> _Sql:
        kind, text = self.tokens[self.i]
        if kind == "term" and text.lower() in ("not", "-"):
            self.i += 1
            if self.peek() is None:
                raise ConfigError(f"filter: nothing after {text!r}")
            inner = self.unary()
            return _Sql(f"coalesce(NOT ({inner.text}), 1)", inner.params)
        if kind == "term" and text.startswith("-") and len(text) > 1:
            self.i += 1
            inner = _term(text[1:])
            return _Sql(f"coalesce(NOT ({inner.text}), 1)", inner.params)
        self.i += 1
        if kind == "open":
            inner = self.expr()
            closing = self.peek()
            if closing is None or closing[0] != "close":
                raise ConfigError("filter: '(' without ')'")
            self.i += 1
            return inner
        if kind == "close":
            raise ConfigError("filter: ')' without '('")
        return _term(text)


def compile_filter(text: str) -> tuple[str, list[Any]] | None:
    """The filter TEXT as an SQL condition over frames ``f`` and its parameters; None if empty.

    Raises ConfigError when the filter cannot be read.
    """
    if len(text) > MAX_FILTER:
        raise ConfigError(f"filter: longer than {MAX_FILTER} characters")
    tokens = _tokens(text)
    if not tokens:
        return None
    parser = _Parser(tokens)
    sql = parser.expr()
    if parser.peek() is not None:
        raise ConfigError("filter: ')' without '('")
    return sql.text, list(sql.params)
