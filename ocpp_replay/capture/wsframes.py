"""Websocket frames as bytes on the wire (RFC 6455), sans I/O.

The capture proxy relays each direction of a connection as a byte stream: what arrives is
forwarded at once, exactly as it came (masks, fragmentation and compression included), and a
:class:`Scanner` finds the frame boundaries in the same bytes so that the messages can be
recorded. Nothing here does I/O; the proxy feeds it.

A Scanner reports each complete message as a :data:`Message` tuple, ``(opcode, payload,
mask)``: text, binary and close messages (pings and pongs pass through unreported). The
payload of a message that came in one uncompressed frame is handed over still masked, with its
mask, so that the unmasking can happen off the event loop (:func:`unmask`); a fragmented or
compressed message is unmasked, joined and inflated here, and reported with an empty mask.

The only thing a Scanner refuses is a message over its size limit (inflated, for a compressed
one): :meth:`Scanner.feed` then returns how many of the new bytes precede that message's last
frame, and sets ``error``. Everything else a
peer sends, valid or not, is the receiving peer's to judge, as it would be without a proxy.
"""

from __future__ import annotations

import os
import struct
import zlib

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10

#: (opcode, payload, mask): see the module docstring.
Message = tuple[int, bytes, bytes]

_NO_MASK = b""


def _unmask_python(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


try:  # aiohttp's compiled masking loop: 0.2 us for a 450-byte MeterValues, the above 1.3 us
    from aiohttp._websocket.mask import _websocket_mask_cython as _mask_in_place
except ImportError:  # pragma: no cover - aiohttp built without its extensions
    _mask_in_place = None


def unmask(payload: bytes, mask: bytes) -> bytes:
    """The payload XOR the 4-byte mask (the same operation masks and unmasks)."""
    if not mask or not payload:
        return payload
    if _mask_in_place is None:
        return _unmask_python(payload, mask)
    out = bytearray(payload)
    _mask_in_place(mask, out)
    return bytes(out)


def close_payload(payload: bytes) -> tuple[int | None, str]:
    """The status code and reason of an (unmasked) close frame's payload."""
    if len(payload) < 2:
        return None, ""
    code = int.from_bytes(payload[:2], "big")
    return code, payload[2:].decode("utf-8", "replace")


def close_frame(code: int, reason: str, *, masked: bool) -> bytes:
    """A close frame, as a client (``masked=True``) or a server sends it."""
    body = code.to_bytes(2, "big") + reason.encode("utf-8")[:123]
    if not masked:
        return bytes((0x80 | CLOSE, len(body))) + body
    mask = os.urandom(4)
    return bytes((0x80 | CLOSE, 0x80 | len(body))) + mask + unmask(body, mask)


class TooLarge(ValueError):
    """A message over the size limit."""


class Inflater:
    """permessage-deflate (RFC 7692) for one direction: compressed message -> its text.

    One decompressor for the whole connection works whatever was negotiated: a sender without
    context takeover only references data of the same message, and a 32 KiB window reads
    anything a smaller window wrote.
    """

    __slots__ = ("_d", "limit")

    def __init__(self, limit: int) -> None:
        self._d = zlib.decompressobj(-zlib.MAX_WBITS)
        self.limit = limit

    def inflate(self, payload: bytes) -> bytes:
        """Raises ValueError for data that does not inflate or inflates past the limit."""
        try:
            out = self._d.decompress(payload + b"\x00\x00\xff\xff", self.limit + 1 if self.limit else 0)
        except zlib.error as exc:
            raise ValueError(f"compressed message does not inflate: {exc}") from exc
        if self._d.unconsumed_tail or (self.limit and len(out) > self.limit):
            raise TooLarge(f"message inflates past {self.limit} bytes: exceeds limit {self.limit}")
        if self._d.eof:  # the sender ended the stream (BFINAL, RFC 7692 7.2.3.3): a new one follows
            self._d = zlib.decompressobj(-zlib.MAX_WBITS)
        return out


class Scanner:
    """Finds the messages in one direction of a websocket connection's byte stream.

    ``feed(data)`` returns how many bytes of ``data`` may be forwarded and appends the messages
    completed by them to ``messages`` (the caller empties it). ``max_size`` bounds a message's
    payload (0: no bound). The first message over it sets ``error``: ``feed`` returns the
    number of bytes before it, and nothing from there on should be forwarded. Scanning goes
    on past it (its frames are skipped), so that a close frame that follows is still seen.
    """

    __slots__ = (
        "_buf",
        "_cut",
        "_need",
        "_op",
        "_parts",
        "_refused",
        "_rsv1",
        "_size",
        "_skip",
        "error",
        "inflater",
        "max_size",
        "messages",
    )  # fmt: skip

    def __init__(self, max_size: int = 0) -> None:
        self.max_size = max_size
        self.messages: list[Message] = []
        self.error: str | None = None
        self._buf = bytearray()  # the start of a frame whose end has not arrived
        self._need = 0  # bytes the buffered frame needs before it can be read again
        self._skip = 0  # bytes of a refused frame still to come
        self._cut = False  # a refused frame's first bytes were forwarded before it was refused
        self._refused = False  # the later fragments of a refused message are skipped
        self._parts: list[bytes] = []  # the unmasked fragments of a message in progress
        self._op = 0
        self._size = 0
        self._rsv1 = False
        #: Set by the proxy when the two ends negotiated permessage-deflate.
        self.inflater: Inflater | None = None

    @property
    def at_boundary(self) -> bool:
        """True when what may be forwarded ends with a whole frame: a frame of the proxy's own
        (a close) may follow it without cutting one of the peer's in two."""
        return not self._cut if self.error is not None else not self._buf

    def feed(self, data: bytes) -> int:
        count = len(data)
        if not (self._buf or self._skip or self._op or count < 4) and self.error is None:
            # The common case first: the read is one whole, unfragmented, uncompressed text or
            # binary frame under 64 KiB (what the loop below would do, in fewer steps).
            b0 = data[0]
            opcode = b0 & 0x0F
            if b0 & 0xC0 == 0x80 and (opcode == TEXT or opcode == BINARY):  # noqa: SIM109
                b1 = data[1]
                length = b1 & 0x7F
                if length < 126:
                    head = 2
                elif length == 126:
                    length = (data[2] << 8) | data[3]
                    head = 4
                else:
                    head = count  # a 64-bit length: left to the loop below
                masked = b1 & 0x80
                if masked:
                    head += 4
                if head + length == count and (length <= self.max_size or not self.max_size):
                    mask = data[head - 4 : head] if masked else _NO_MASK
                    self.messages.append((opcode, data[head:], mask))
                    return count
        if self._skip:
            if count <= self._skip:
                self._skip -= count
                return count
            data = data[self._skip :]
            self._skip = 0
        held = len(self._buf)
        if held:
            self._buf += data
            if len(self._buf) < self._need:
                return count
            data = bytes(self._buf)
            self._buf = bytearray()
        forwardable = -1
        n = len(data)
        pos = 0
        limit = self.max_size
        out = self.messages
        while pos < n:
            if n - pos < 2:
                self._hold(data, pos, 2)
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            head = 2 + (4 if b1 & 0x80 else 0) + (2 if length == 126 else 8 if length == 127 else 0)
            if n - pos < head:
                self._hold(data, pos, head)
                break
            if length == 126:
                length = struct.unpack_from("!H", data, pos + 2)[0]
            elif length == 127:
                length = struct.unpack_from("!Q", data, pos + 2)[0]
            opcode = b0 & 0x0F
            end = pos + head + length
            if (limit and length + (self._size if opcode == CONTINUATION else 0) > limit) or (
                self._refused and opcode == CONTINUATION
            ):
                if self.error is None:
                    self.error = f"message of {length + self._size} bytes exceeds limit {limit}"
                    forwardable = max(0, pos - held)
                    self._cut = pos < held
                if opcode < 8:
                    self._refused = not b0 & 0x80
                    self._parts, self._op, self._size = [], 0, 0
                if end > n:
                    self._skip = end - n
                    break
                pos = end
                continue
            if end > n:
                self._hold(data, pos, head + length)
                break
            if self.error is not None and opcode != CLOSE:
                pos = end  # after a refused message nothing is forwarded: only a close matters
                continue
            mask = data[pos + head - 4 : pos + head] if b1 & 0x80 else _NO_MASK
            payload = data[pos + head : end]
            start, pos = pos, end
            if opcode == TEXT or opcode == BINARY:  # noqa: SIM109 (the hot path: no tuple)
                if b0 & 0xC0 == 0x80:  # FIN, not compressed: the common case
                    out.append((opcode, payload, mask))
                elif b0 & 0x80:
                    if not self._inflate(opcode, unmask(payload, mask)):
                        forwardable, self._cut = max(0, start - held), start < held
                else:
                    self._op, self._rsv1, self._size = opcode, bool(b0 & 0x40), length
                    self._parts = [unmask(payload, mask)]
            elif opcode == CONTINUATION and self._op:  # (one without a first frame: ignored)
                self._parts.append(unmask(payload, mask))
                self._size += length
                if b0 & 0x80:
                    whole, op = b"".join(self._parts), self._op
                    self._parts, self._op, self._size = [], 0, 0
                    if not self._rsv1:
                        out.append((op, whole, _NO_MASK))
                    elif not self._inflate(op, whole):
                        forwardable, self._cut = max(0, start - held), start < held
            elif opcode == CLOSE:
                out.append((CLOSE, payload, mask))
            # pings, pongs and unknown opcodes are forwarded, not reported
        return forwardable if forwardable >= 0 else count

    def _inflate(self, opcode: int, compressed: bytes) -> bool:
        """Report a compressed message inflated; False (and ``error`` set) if it is too large."""
        if self.inflater is None:  # compression was not negotiated: reported as it came
            self.messages.append((opcode, compressed, _NO_MASK))
            return True
        try:
            self.messages.append((opcode, self.inflater.inflate(compressed), _NO_MASK))
        except TooLarge as exc:
            if self.error is None:
                self.error = str(exc)
                return False
        except ValueError:  # does not inflate: forwarded all the same, reported as it came
            self.messages.append((opcode, compressed, _NO_MASK))
        return True

    def _hold(self, data: bytes, pos: int, need: int) -> None:
        self._buf = bytearray(data[pos:])
        self._need = need
