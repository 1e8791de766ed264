"""Text from charger traffic, made safe to show in a log line, a terminal or a report. Pure."""

from __future__ import annotations

import json

__all__ = ["escape_controls", "escape_json", "pretty_json", "toml_string"]


def escape_controls(text: str) -> str:
    """Text from a charger or a CSMS, safe for a log line or a terminal.

    Control characters (C0, DEL, C1), line and paragraph separators and invisible format
    characters such as bidi overrides become Python escapes (``\\x1b``, ``\\u202e``);
    everything else, non-ASCII letters included, is kept.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _json_escape(c: str) -> str:
    return json.dumps(c)[1:-1]  # \\u202e; a character beyond the BMP as its surrogate pair


def escape_json(text: str) -> str:
    """JSON text (as ``json.dumps(..., ensure_ascii=False)`` writes it) with every character that
    is not printable (bidi overrides, C1 controls, separators, ...) as a ``\\u`` escape.

    Letters of every script stay readable; a JSON reader decodes the escapes to the very same
    text. Line breaks (an indented document's) are kept: inside strings JSON escapes them anyway.
    """
    if text.isprintable():
        return text
    return "\n".join(
        line if line.isprintable() else "".join(c if c.isprintable() else _json_escape(c) for c in line)
        for line in text.split("\n")
    )


def _toml_escape(c: str) -> str:
    code = ord(c)
    if 0xD800 <= code <= 0xDFFF:  # a lone surrogate: TOML has no way to write one
        return "\\uFFFD"
    return f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"


def toml_string(text: str) -> str:
    """A TOML basic string, every character that is not printable written as an escape."""
    out = json.dumps(text, ensure_ascii=False)  # JSON's short escapes (\\n, \\") are TOML's too
    if out.isprintable():
        return out
    return "".join(c if c.isprintable() else _toml_escape(c) for c in out)


def pretty_json(raw: str, indent: int = 2) -> str | None:
    """RAW, a JSON text, re-indented without touching a single token; None if it is not JSON.

    Only the whitespace between tokens changes: numbers, strings and their escapes stay exactly
    as sent (``json.loads`` then ``json.dumps`` would turn 9223372036854775807.0 into 9.2e18 and
    re-escape strings), so what a reader sees is what the charger sent, laid out.
    """
    try:
        json.loads(raw)
    except ValueError:
        return None
    out: list[str] = []
    depth = 0
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == '"':
            j = i + 1
            while j < n and raw[j] != '"':
                j += 2 if raw[j] == "\\" else 1
            out.append(raw[i : j + 1])
            i = j + 1
            continue
        if c in " \t\r\n":
            i += 1
            continue
        if c in "{[":
            k = i + 1
            while k < n and raw[k] in " \t\r\n":
                k += 1
            if k < n and raw[k] == ("}" if c == "{" else "]"):  # empty: keep it on the line
                out.append(c + raw[k])
                i = k + 1
                continue
            depth += 1
            out.append(c + "\n" + " " * (indent * depth))
        elif c in "}]":
            depth -= 1
            out.append("\n" + " " * (indent * depth) + c)
        elif c == ",":
            out.append(",\n" + " " * (indent * depth))
        elif c == ":":
            out.append(": ")
        else:
            out.append(c)
        i += 1
    return "".join(out)
