"""The proxy's sans-I/O websocket layer: frame scanning and the HTTP upgrade.

Frames are built by an independent implementation (the ``websockets`` package's sans-I/O
frames and its permessage-deflate extension), never by the code under test.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Close, Frame, Opcode

from ocpp_replay.capture.handshake import (
    HandshakeError,
    UpgradeResponse,
    accept_key,
    check_client_handshake,
    deflate_offers,
    parse_response_head,
    upgrade_request,
)
from ocpp_replay.capture.wsframes import (
    BINARY,
    CLOSE,
    TEXT,
    Inflater,
    Scanner,
    _unmask_python,
    close_frame,
    close_payload,
    unmask,
)

METER = b'[2,"1","MeterValues",{"connectorId":1,"transactionId":9223372036854775807}]'


def wire(*frames: Frame, mask: bool = True, deflate: PerMessageDeflate | None = None) -> bytes:
    return b"".join(f.serialize(mask=mask, extensions=[deflate] if deflate else None) for f in frames)


def scan(
    data: bytes, chunks: list[int] | None = None, max_size: int = 0
) -> tuple[list[tuple[int, bytes]], int]:
    """Feed ``data`` cut at ``chunks``; the messages (unmasked) and the bytes declared forwardable."""
    scanner = Scanner(max_size)
    cuts = [0, *sorted(c for c in (chunks or []) if 0 < c < len(data)), len(data)]
    forwardable = 0
    for a, b in itertools.pairwise(cuts):
        forwardable += scanner.feed(data[a:b])
    return [(op, unmask(payload, mask)) for op, payload, mask in scanner.messages], forwardable


def test_masked_and_unmasked_frames_of_every_length_class() -> None:
    for size in (0, 1, 125, 126, 65535, 65536, 70_000):
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        for mask in (True, False):
            data = wire(Frame(Opcode.BINARY, payload), Frame(Opcode.TEXT, METER), mask=mask)
            messages, forwardable = scan(data)
            assert messages == [(BINARY, payload), (TEXT, METER)]
            assert forwardable == len(data)


@given(st.lists(st.integers(min_value=1, max_value=400), max_size=12), st.booleans())
def test_any_split_of_the_stream_gives_the_same_messages(cuts: list[int], mask: bool) -> None:
    data = wire(
        Frame(Opcode.TEXT, METER),
        Frame(Opcode.PING, b"alfen"),
        Frame(Opcode.TEXT, b"[2,", fin=False),
        Frame(Opcode.PONG, b""),
        Frame(Opcode.CONT, b'"7","Heartbeat",{}]'),
        Frame(Opcode.BINARY, b"\x00\xff" * 100),
        Frame(Opcode.CLOSE, Close(4000, "bye").serialize()),
        mask=mask,
    )
    messages, forwardable = scan(data, cuts)
    assert forwardable == len(data)
    assert messages == [
        (TEXT, METER),
        (TEXT, b'[2,"7","Heartbeat",{}]'),
        (BINARY, b"\x00\xff" * 100),
        (CLOSE, Close(4000, "bye").serialize()),
    ]
    assert close_payload(messages[-1][1]) == (4000, "bye")


def test_a_read_that_is_one_whole_frame_is_scanned_as_the_general_loop_scans_it() -> None:
    # A read holding exactly one frame takes the scanner's shortcut; the same frame behind a
    # ping in the same read goes through its general loop. Both must see the same thing.
    opcodes = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PING, Opcode.CLOSE)
    sizes, limits = (0, 1, 100, 125, 126, 127, 1000, 65535, 65536), (0, 100, 126, 65535)
    for opcode, size, fin, rsv1, mask in itertools.product(opcodes, sizes, *[(True, False)] * 3):
        if opcode in (Opcode.PING, Opcode.CLOSE) and (size > 125 or not fin):
            continue
        frame = wire(Frame(opcode, bytes(range(256)) * (size // 256) + bytes(size % 256), fin=fin), mask=mask)
        if rsv1:  # (websockets sets it only through an extension: set by hand, as a deflate sender does)
            frame = bytes([frame[0] | 0x40]) + frame[1:]
        ping = wire(Frame(Opcode.PING, b"p"), mask=mask)
        for limit, cut in itertools.product(limits, (len(frame), len(frame) - 1, 129, 133)):
            alone, behind = Scanner(limit), Scanner(limit)
            case = (opcode, size, fin, rsv1, mask, limit, cut)
            assert alone.feed(frame[:cut]) == behind.feed(ping + frame[:cut]) - len(ping), case
            assert alone.messages == behind.messages, case
            assert (alone.error, alone.at_boundary) == (behind.error, behind.at_boundary), case


def test_a_message_over_the_limit_is_refused_where_it_starts_and_a_later_close_is_seen() -> None:
    small = wire(Frame(Opcode.TEXT, METER))
    big = wire(Frame(Opcode.TEXT, b"A" * 5000))
    close = wire(Frame(Opcode.CLOSE, Close(1009, "").serialize()))
    scanner = Scanner(1000)
    assert scanner.feed(small + big[:300]) == len(small)  # up to the refused message, not into it
    assert scanner.error == "message of 5000 bytes exceeds limit 1000"
    assert scanner.at_boundary  # nothing of the big frame was let through: a close may follow
    scanner.feed(big[300:] + close)
    assert [m[0] for m in scanner.messages] == [TEXT, CLOSE]


def test_a_refused_message_whose_head_was_forwarded_earlier_leaves_the_stream_cut() -> None:
    big = wire(Frame(Opcode.TEXT, b"A" * 5000), mask=False)
    scanner = Scanner(1000)
    assert scanner.feed(big[:1]) == 1  # one byte of the head: nothing to judge yet
    assert scanner.feed(big[1:50]) == 0
    assert scanner.error is not None and not scanner.at_boundary


def test_fragments_count_towards_the_limit_together() -> None:
    data = wire(Frame(Opcode.TEXT, b"A" * 600, fin=False), Frame(Opcode.CONT, b"A" * 600))
    messages, _ = scan(data, max_size=1000)
    assert messages == []
    messages, _ = scan(data, max_size=1200)
    assert messages == [(TEXT, b"A" * 1200)]


def test_compressed_messages_are_inflated_across_messages_and_bounded() -> None:
    # Context takeover on: the second message refers to the first one's window.
    sender = PerMessageDeflate(False, False, 15, 15)
    data = wire(Frame(Opcode.TEXT, METER), Frame(Opcode.TEXT, METER), deflate=sender)
    assert len(data) < 2 * len(METER)
    scanner = Scanner(1000)
    scanner.inflater = Inflater(1000)
    assert scanner.feed(data) == len(data)
    assert [(op, payload) for op, payload, _ in scanner.messages] == [(TEXT, METER), (TEXT, METER)]

    bomb = wire(Frame(Opcode.TEXT, b"A" * 100_000), deflate=PerMessageDeflate(False, False, 15, 15))
    scanner = Scanner(1000)
    scanner.inflater = Inflater(1000)
    assert len(bomb) < 1000  # small on the wire, large inflated: refused all the same
    assert scanner.feed(bomb) == 0
    assert scanner.error is not None and "exceeds limit 1000" in scanner.error


def test_close_frames_of_the_proxys_own_are_valid_frames() -> None:
    for masked in (True, False):
        messages, _ = scan(close_frame(1001, "proxy shutting down", masked=masked))
        assert [(op, close_payload(p)) for op, p in messages] == [(CLOSE, (1001, "proxy shutting down"))]
        frame = close_frame(1001, "x", masked=masked)
        assert bool(frame[1] & 0x80) is masked
    assert close_payload(b"") == (None, "")


def test_unmask_is_its_own_inverse() -> None:
    assert unmask(unmask(METER, b"\x01\x02\x03\x04"), b"\x01\x02\x03\x04") == METER
    assert unmask(b"", b"abcd") == b"" and unmask(METER, b"") == METER


# ----------------------------------------------------------------------------- the upgrade


def test_accept_key_is_rfc_6455s_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_charger_handshake_is_checked_before_the_csms_is_dialled() -> None:
    good = {
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    assert check_client_handshake("GET", good) == "dGhlIHNhbXBsZSBub25jZQ=="
    for method, headers, words in [
        ("POST", good, "GET"),
        ("GET", {**good, "Sec-WebSocket-Version": "8"}, "Version"),
        ("GET", {**good, "Sec-WebSocket-Key": "short"}, "Key"),
        ("GET", {**good, "Connection": "keep-alive"}, "Connection"),
    ]:
        with pytest.raises(HandshakeError, match=words):
            check_client_handshake(method, headers)


def test_only_permessage_deflate_offers_go_upstream() -> None:
    assert deflate_offers("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits") == (
        "permessage-deflate; client_max_window_bits"
    )
    assert deflate_offers("x-foo") is None and deflate_offers(None) is None


def test_upgrade_request_and_response_round_trip() -> None:
    request = upgrade_request("/ocpp/ALF%0A1?x=1", "csms:8180", "k", [("Authorization", "Basic QQ==")])
    assert request.startswith(b"GET /ocpp/ALF%0A1?x=1 HTTP/1.1\r\nHost: csms:8180\r\n")
    assert request.endswith(b"Authorization: Basic QQ==\r\n\r\n")
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    head = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\nSec-WebSocket-Protocol: ocpp2.0.1"
    ).encode()
    response = parse_response_head(head)
    assert (response.status, response.protocol) == (101, "ocpp2.0.1")
    assert response.off_spec(key, ("ocpp1.6", "ocpp2.0.1")) == []
    response.check_extensions(None)
    assert response.off_spec(key, ("ocpp1.6",)) == ["subprotocol 'ocpp2.0.1' was not offered"]
    [note] = response.off_spec(key, ())
    assert note == "subprotocol 'ocpp2.0.1' was not offered (the charger offered none)"
    assert response.off_spec("b3RoZXIga2V5IGhlcmUhIQ==", ("ocpp2.0.1",)) == ["wrong Sec-WebSocket-Accept"]
    deflated = UpgradeResponse(
        101, "", CIMultiDict({**response.headers, "Sec-WebSocket-Extensions": "x-foo"})
    )
    with pytest.raises(HandshakeError, match="x-foo"):
        deflated.check_extensions("permessage-deflate")
    assert parse_response_head(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic").status == 401
    for bad in (b"SSH-2.0-OpenSSH", b"HTTP/1.1 101 OK\r\nno colon here"):
        with pytest.raises(HandshakeError):
            parse_response_head(bad)


@given(st.binary(max_size=600), st.binary(min_size=4, max_size=4))
def test_the_compiled_and_the_python_unmasking_agree(payload: bytes, mask: bytes) -> None:
    assert unmask(payload, mask) == _unmask_python(payload, mask)
    assert _unmask_python(_unmask_python(payload, mask), mask) == payload


@given(
    st.binary(max_size=3000),
    st.lists(st.integers(min_value=1, max_value=3000), max_size=8),
    st.sampled_from([0, 1, 125, 1000]),
    st.booleans(),
)
def test_the_scanner_takes_any_bytes_without_raising(
    data: bytes, cuts: list[int], limit: int, deflate: bool
) -> None:
    """Whatever a peer sends, the scanner forwards at most what it was given and never raises."""
    scanner = Scanner(limit)
    if deflate:
        scanner.inflater = Inflater(limit)
    cuts = [0, *sorted(c for c in cuts if c < len(data)), len(data)]
    for a, b in itertools.pairwise(cuts):
        assert 0 <= scanner.feed(data[a:b]) <= b - a
    for opcode, payload, mask in scanner.messages:
        assert opcode in (TEXT, BINARY, CLOSE) and len(mask) in (0, 4)
        assert not limit or len(payload) <= limit or opcode == CLOSE


def test_after_a_refused_message_only_a_close_is_reported() -> None:
    """Nothing after the refused message is forwarded, so nothing after it may be recorded."""
    data = wire(
        Frame(Opcode.TEXT, METER),
        Frame(Opcode.TEXT, b"x" * 2000),
        Frame(Opcode.TEXT, b'[2,"2","NEVER_FORWARDED",{}]'),
        Frame(Opcode.CLOSE, Close(1000, "").serialize()),
    )
    messages, _ = scan(data, max_size=1000)
    assert [op for op, _ in messages] == [TEXT, CLOSE]
    assert messages[0][1] == METER


def test_a_sender_that_ends_each_deflate_stream_is_inflated_every_time() -> None:
    """RFC 7692 7.2.3.3: a message may end with a final block; the next starts a new stream."""
    import zlib

    def deflate_final(text: bytes) -> bytes:
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return c.compress(text) + c.flush(zlib.Z_FINISH)

    def compressed_frame(payload: bytes) -> bytes:  # FIN + RSV1 + text, unmasked, by hand
        assert len(payload) < 126
        return bytes((0xC1, len(payload))) + payload

    data = b"".join(compressed_frame(deflate_final(m)) for m in (METER, b'[3,"1",{}]', METER))
    scanner = Scanner(1000)
    scanner.inflater = Inflater(1000)
    scanner.feed(data)
    assert [payload for _, payload, _ in scanner.messages] == [METER, b'[3,"1",{}]', METER]


def test_continuation_frames_without_a_first_frame_are_ignored() -> None:
    data = wire(Frame(Opcode.CONT, b"orphan"), Frame(Opcode.CONT, b"orphan"), Frame(Opcode.TEXT, METER))
    assert scan(data, max_size=1000)[0] == [(TEXT, METER)]


def test_answers_that_are_not_a_final_status_are_refused() -> None:
    for line in ("HTTP/1.1 100 Continue", "HTTP/1.1 000 Nothing", "HTTP/1.1 ²¹¹ Odd", "HTTP/1.1 4040 Long"):
        with pytest.raises(HandshakeError):
            parse_response_head(line.encode())
    assert parse_response_head(b"HTTP/1.0 101 Switching Protocols").status == 101
    two_lines = parse_response_head(b"HTTP/1.1 101 OK\r\nConnection: keep-alive\r\nConnection: Upgrade")
    assert "Upgrade" in two_lines.headers.getall("Connection")
