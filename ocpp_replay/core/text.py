"""Text from charger traffic, made safe to show in a log line, a terminal or a report. Pure."""

from __future__ import annotations

import json

__all__ = ["escape_controls", "escape_json", "toml_string"]


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
