"""Text from charger traffic, made safe to show in a log line, a terminal or a report. Pure."""

from __future__ import annotations


def escape_controls(text: str) -> str:
    """Text from a charger or a CSMS, safe for a log line or a terminal.

    Control characters (C0, DEL, C1), line and paragraph separators and invisible format
    characters such as bidi overrides become Python escapes (``\\x1b``, ``\\u202e``);
    everything else, non-ASCII letters included, is kept.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
