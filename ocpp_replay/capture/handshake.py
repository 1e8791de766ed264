"""The websocket handshake: what a charger's tells (charge point id, subprotocols, auth user),
and the HTTP upgrade itself (RFC 6455 section 4) as the proxy speaks it to the CSMS.

Pure. Shared by the aiohttp proxy and the mitmproxy addon so both record sessions alike, and
log what they tell with the same escaping (:func:`escape_controls`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from multidict import CIMultiDict


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


# ----------------------------------------------------------------------------- the HTTP upgrade

#: RFC 6455 section 1.3: appended to the client's key to compute Sec-WebSocket-Accept.
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class HandshakeError(ValueError):
    """An HTTP upgrade that is not a valid websocket handshake."""


class UnsupportedVersion(HandshakeError):
    """A websocket version other than 13: answered 426 with the version spoken (RFC 6455 4.4)."""


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value that answers a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _WS_GUID).digest()).decode("ascii")


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def header(headers: Mapping[str, str], name: str) -> str:
    """Every value of a header, joined with commas as HTTP allows (a multidict may hold the
    header on several lines)."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return ", ".join(getall(name, ()))
    return headers.get(name, "")


def _tokens(headers: Mapping[str, str], name: str) -> set[str]:
    return {t.strip().lower() for t in header(headers, name).split(",")}


def check_client_handshake(method: str, headers: Mapping[str, str]) -> str:
    """The Sec-WebSocket-Key of a client's upgrade request. Raises HandshakeError."""
    if method != "GET":
        raise HandshakeError(f"a websocket handshake is a GET, not {method}")
    if "upgrade" not in _tokens(headers, "Connection"):
        raise HandshakeError("no 'Connection: upgrade' header")
    version = headers.get("Sec-WebSocket-Version", "")
    if version.strip() != "13":
        raise UnsupportedVersion(
            f"unsupported Sec-WebSocket-Version {version!r} (13 is the websocket version)"
        )
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        raise HandshakeError(f"invalid Sec-WebSocket-Key {key!r}") from None
    return key


def deflate_offers(header: str | None) -> str | None:
    """The permessage-deflate offers of a Sec-WebSocket-Extensions header, verbatim.

    The proxy forwards compressed frames as they are and inflates them to record them; any
    other extension would leave it unable to read the frames, so it is not offered upstream.
    """
    if not header:
        return None
    offers = [o.strip() for o in header.split(",") if o.split(";")[0].strip().lower() == "permessage-deflate"]
    return ", ".join(offers) or None


def upgrade_request(target: str, host: str, key: str, headers: list[tuple[str, str]]) -> bytes:
    """The client's half of the handshake: ``target`` is the path and query, as sent."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    # Header values go upstream as the bytes the charger sent (aiohttp decoded them as UTF-8).
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class UpgradeResponse:
    """The server's answer to an upgrade request, as far as its headers go."""

    status: int
    reason: str
    headers: CIMultiDict[str]

    @property
    def protocol(self) -> str | None:
        return self.headers.get("Sec-WebSocket-Protocol") or None

    @property
    def extensions(self) -> str | None:
        return header(self.headers, "Sec-WebSocket-Extensions") or None

    def check(self, key: str, offered: tuple[str, ...], offered_extensions: str | None) -> None:
        """Raises HandshakeError unless this is a valid 101 answer to what was sent."""
        h = self.headers
        if "websocket" not in _tokens(h, "Upgrade") or "upgrade" not in _tokens(h, "Connection"):
            raise HandshakeError("101 without 'Upgrade: websocket' and 'Connection: upgrade'")
        if h.get("Sec-WebSocket-Accept", "").strip() != accept_key(key):
            raise HandshakeError("wrong Sec-WebSocket-Accept")
        if len(h.getall("Sec-WebSocket-Protocol", ())) > 1:
            raise HandshakeError("more than one Sec-WebSocket-Protocol")
        if self.protocol is not None and self.protocol not in offered:
            raise HandshakeError(f"subprotocol {self.protocol!r} was not offered")
        for ext in (self.extensions or "").split(","):
            name = ext.split(";")[0].strip().lower()
            if name and (name != "permessage-deflate" or not offered_extensions):
                raise HandshakeError(f"extension {name!r} was not offered")


def parse_response_head(head: bytes) -> UpgradeResponse:
    """Status line and headers of an HTTP response (``head`` ends before the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    code = parts[1] if len(parts) > 1 else ""
    if not parts[0].startswith("HTTP/1.") or len(code) != 3 or not (code.isascii() and code.isdigit()):
        raise HandshakeError(f"not an HTTP response: {lines[0][:80]!r}")
    status = int(code)
    if status != 101 and not 200 <= status <= 599:  # 1xx other than 101 answer nothing here
        raise HandshakeError(f"unexpected status {status} in answer to the upgrade")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise HandshakeError(f"malformed header line {line[:80]!r}")
        headers.add(name.strip(), value.strip())
    return UpgradeResponse(status, parts[2] if len(parts) > 2 else "", headers)
