"""What the websocket handshake of a charger tells: charge point id, subprotocols, auth user.

Pure. Shared by the aiohttp proxy and the mitmproxy addon so both record sessions alike, and
log what they tell with the same escaping (:func:`escape_controls`).
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote


def charge_point_id_of(path: str) -> tuple[str, str]:
    """(charge point id, raw last segment) of a request path: its last non-empty segment.

    ``path`` is the path as sent (percent-encoded, without the query); the id is decoded.
    """
    segments = [s for s in path.split("/") if s]
    if not segments:
        return "", ""
    raw = segments[-1]
    return unquote(raw), raw


def basic_auth_user(header: str | None) -> str | None:
    """The user name of a Basic Authorization header. The password is never returned."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(":")[0]


def offered_protocols(header: str | None) -> tuple[str, ...]:
    """The subprotocols a Sec-WebSocket-Protocol header offers, in the charger's order."""
    if not header:
        return ()
    return tuple(p.strip() for p in header.split(",") if p.strip())


def escape_controls(text: str) -> str:
    """Text from a charger or a CSMS, safe for a log line or a terminal.

    Control characters (C0, DEL, C1), line and paragraph separators and invisible format
    characters such as bidi overrides become Python escapes (``\\x1b``, ``\\u202e``);
    everything else, non-ASCII letters included, is kept.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
