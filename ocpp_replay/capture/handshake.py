"""The websocket handshake: what a charger's tells (charge point id, subprotocols, auth user),
and the HTTP upgrade itself (RFC 6455 section 4) as the proxy reads it from the charger, speaks
it to the CSMS, and passes the CSMS's answer back.

Pure. Shared by the proxy and the mitmproxy addon so both record sessions alike, and log what
they tell with the same escaping (:func:`escape_controls`).

HTTP heads are read as lenient parsers read them (llhttp, nginx): a line ends with LF, with or
without a CR before it. What the proxy passes on keeps each line's ending as it was sent.
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

#: How the charge point id is taken from the forwarded part of the path (``--id-from``).
ID_RULES = ("last", "first", "suffix")


def path_suffix(path: str, upstream_path: str, prefix: str | None = None) -> str | None:
    """The part of a charger's request path that is forwarded after the upstream URL's path,
    exactly as dialled (percent-encoding, extra segments and a trailing slash kept).

    With ``prefix`` (``--path-prefix``) the path must begin with it (segment-wise) and the rest
    is the suffix; otherwise None. Without: the rest after the upstream URL's own path when the
    charger dialled that path, else the last non-empty segment and what follows it.
    """
    if prefix is not None:
        base = prefix.rstrip("/")
        return path[len(base) :] if path == base or path.startswith(base + "/") else None
    base = upstream_path.rstrip("/")
    if path == base or path.startswith(base + "/"):
        return path[len(base) :]
    stripped = path.rstrip("/")
    cut = stripped.rfind("/")
    return path[cut:] if cut >= 0 else "/" + path


def charge_point_id(suffix: str, rule: str = "last") -> str:
    """The charge point id in a forwarded path suffix, percent-decoded: its ``last`` non-empty
    segment, its ``first``, or the whole ``suffix`` without slashes at its ends."""
    if rule == "suffix":
        raw = suffix.strip("/")
    else:
        segments = [s for s in suffix.split("/") if s]
        if not segments:
            return ""
        raw = segments[-1] if rule == "last" else segments[0]
    return unquote(raw)


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


def basic_auth(auth: Mapping[str, str], charge_point_id: str, user: str | None) -> tuple[str, str] | None:
    """The Authorization header a charger dials with: its password from ``auth`` (by charge
    point id, else ``"*"``; an auth file's contents), ``user`` as recorded or the id; None
    without a password."""
    password = auth.get(charge_point_id, auth.get("*"))
    if password is None:
        return None
    token = base64.b64encode(f"{user or charge_point_id}:{password}".encode()).decode("ascii")
    return ("Authorization", f"Basic {token}")


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
    """The client's half of the handshake: ``target`` is the path and query, as sent.

    Strings here are the bytes on the wire read as ISO-8859-1, so they go out as they came in.
    """
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def head_end(buf: bytes | bytearray, start: int = 0) -> tuple[int, int] | None:
    """Where an HTTP head in ``buf`` ends: (end of its last line, start of what follows the
    blank line), or None while the blank line has not arrived. ``start`` skips bytes already
    searched. Lines end with LF, with or without CR, as lenient parsers accept."""
    i = buf.find(b"\n", max(0, start - 2))
    while i >= 0:
        j = i + 1
        if buf[j : j + 1] == b"\n":
            return j, j + 1
        if buf[j : j + 2] == b"\r\n":
            return j, j + 2
        i = buf.find(b"\n", j)
    return None


def _lines(head: bytes) -> list[str]:
    """The lines of a head (ISO-8859-1, so every byte maps to one character), endings removed."""
    return [line.removesuffix("\r") for line in head.decode("latin-1").split("\n") if line not in ("", "\r")]


def _header_lines(lines: list[str]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        if line[:1] in (" ", "\t"):
            continue  # an obsolete folded continuation: passed on, not read
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise HandshakeError(f"malformed header line {line[:80]!r}")
        headers.add(name.strip(), value.strip(" \t"))
    return headers


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """A client's request head: its method, request-target as sent, and headers in order."""

    method: str
    target: str
    headers: CIMultiDict[str]

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str | None:
        """The query as sent (still percent-encoded); "" for a bare ``?``, None for none."""
        _, sep, query = self.target.partition("?")
        return query if sep else None

    @property
    def is_upgrade(self) -> bool:
        return "websocket" in _tokens(self.headers, "Upgrade")


def parse_request_head(head: bytes) -> UpgradeRequest:
    """Request line and headers of an HTTP request head. Raises HandshakeError."""
    lines = _lines(head)
    parts = lines[0].split(" ") if lines else []
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        raise HandshakeError(f"not an HTTP/1.x request line: {(lines or [''])[0][:80]!r}")
    method, target, _ = parts
    if not target.startswith("/"):
        raise HandshakeError(f"request-target {target[:80]!r} is not a path")
    return UpgradeRequest(method, target, _header_lines(lines[1:]))


#: Headers that describe one connection, not the exchange (RFC 9110 7.6.1), and the
#: websocket mechanics the proxy speaks on each leg itself: not passed from one leg to the other.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "upgrade", "proxy-authorization", "host"}
)
_KEY_HEADERS = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"})


def passed_on_request_headers(request: UpgradeRequest) -> list[tuple[str, str]]:
    """The charger's headers that go upstream as sent, in its order: all but hop-by-hop ones
    (and those its Connection header names), Host, and the key, version and extension offers
    (the proxy sends its own key, and only the extensions it can follow)."""
    named = _tokens(request.headers, "Connection") - {"upgrade", "close", "keep-alive"}
    return [
        (name, value)
        for name, value in request.headers.items()
        if name.lower() not in _HOP_BY_HOP and name.lower() not in _KEY_HEADERS and name.lower() not in named
    ]


def passed_on_head(head: bytes, *, switching: bool, accept: str | None) -> bytes:
    """The CSMS's answer head as the charger gets it: the status line and headers as sent,
    each line with its own ending, less hop-by-hop headers. A 101 keeps its Upgrade and
    Connection (they are the switch) and gets ``accept`` as its Sec-WebSocket-Accept (the
    charger's key is not the one the proxy sent); ``accept=None`` keeps the CSMS's value.
    ``head`` ends with its last header line's ending, before the blank line."""
    text = head.decode("latin-1")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    headers = _header_lines(_lines(head)[1:])
    drop = (_HOP_BY_HOP - {"host"}) | (_tokens(headers, "Connection") - {"close", "keep-alive"})
    if switching:
        drop -= {"upgrade", "connection"}
    out = [lines[0] + "\n"]
    dropping = False
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):  # an obsolete folded continuation of the previous header
            if not dropping:
                out.append(line + "\n")
            continue
        name = line.partition(":")[0].strip().lower()
        dropping = name in drop
        if dropping:
            continue
        if name == "sec-websocket-accept" and switching and accept is not None:
            ending = "\r" if line.endswith("\r") else ""
            line = line[: line.index(":") + 1] + " " + accept + ending
        out.append(line + "\n")
    return "".join(out).encode("latin-1")


def body_end(status: int, headers: Mapping[str, str], buf: bytes | bytearray, eof: bool) -> int | None:
    """How many bytes of ``buf`` (what followed a response head) are the response's body, or
    None while more must be read. Content-Length, chunked, or until the connection ends."""
    if 100 <= status < 200 or status in (204, 304):
        return 0
    if "chunked" in _tokens(headers, "Transfer-Encoding"):
        return _chunked_end(buf) if not eof else len(buf)
    length = headers.get("Content-Length")
    if length is not None:
        if not length.strip().isdigit():
            raise HandshakeError(f"invalid Content-Length {length[:40]!r}")
        n = int(length)
        return n if len(buf) >= n else (len(buf) if eof else None)
    return len(buf) if eof else None


def _chunked_end(buf: bytes | bytearray) -> int | None:
    """The end of a chunked body (after its last chunk and trailers), or None if incomplete."""
    pos = 0
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return None
        size_text = bytes(buf[pos:nl]).split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HandshakeError(f"invalid chunk size {size_text[:20]!r}") from None
        pos = nl + 1
        if size == 0:
            end = head_end(b"\n" + bytes(buf[pos:]))  # the trailers end with a blank line
            return None if end is None else pos + end[1] - 1
        pos += size
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return None
        pos = nl + 1


@dataclass(frozen=True, slots=True)
class UpgradeResponse:
    """The server's answer to an upgrade request, as far as its headers go."""

    status: int
    reason: str
    headers: CIMultiDict[str]
    head: bytes = b""  # as received, up to the blank line

    @property
    def protocol(self) -> str | None:
        return self.headers.get("Sec-WebSocket-Protocol") or None

    @property
    def extensions(self) -> str | None:
        return header(self.headers, "Sec-WebSocket-Extensions") or None

    def check_extensions(self, offered_extensions: str | None) -> None:
        """Raises HandshakeError for an extension the proxy did not offer (it could not follow
        the frames to record them)."""
        for ext in (self.extensions or "").split(","):
            name = ext.split(";")[0].strip().lower()
            if name and (name != "permessage-deflate" or not offered_extensions):
                raise HandshakeError(f"extension {name!r} was not offered")

    def off_spec(self, key: str, offered: tuple[str, ...]) -> list[str]:
        """What RFC 6455 4.1 says a client must refuse in this 101 (the charger decides)."""
        h = self.headers
        problems = []
        if "websocket" not in _tokens(h, "Upgrade") or "upgrade" not in _tokens(h, "Connection"):
            problems.append("101 without 'Upgrade: websocket' and 'Connection: upgrade'")
        if h.get("Sec-WebSocket-Accept", "").strip() != accept_key(key):
            problems.append("wrong Sec-WebSocket-Accept")
        if len(h.getall("Sec-WebSocket-Protocol", ())) > 1:
            problems.append("more than one Sec-WebSocket-Protocol")
        if self.protocol is not None and self.protocol not in offered:
            problems.append(
                f"subprotocol {self.protocol!r} was not offered"
                + ("" if offered else " (the charger offered none)")
            )
        return problems


def parse_response_head(head: bytes) -> UpgradeResponse:
    """Status line and headers of an HTTP response (``head`` ends before the blank line)."""
    lines = _lines(head) or [""]
    parts = lines[0].split(" ", 2)
    code = parts[1] if len(parts) > 1 else ""
    if not parts[0].startswith("HTTP/1.") or len(code) != 3 or not (code.isascii() and code.isdigit()):
        raise HandshakeError(f"not an HTTP response: {lines[0][:80]!r}")
    status = int(code)
    if status != 101 and not 200 <= status <= 599:  # 1xx other than 101 answer nothing here
        raise HandshakeError(f"unexpected status {status} in answer to the upgrade")
    headers = _header_lines(lines[1:])
    return UpgradeResponse(status, parts[2] if len(parts) > 2 else "", headers, bytes(head))
