"""Native protocol: onecard's compiled MessagePack path against the plain-Python msgspec path
(Structs in, Structs out)."""

import pytest

from onecard.core import crypto
from onecard.core.native_msg import decode_bodies, encode_tap_replies
from onecard.protocols import native

from .support import record


@pytest.fixture
def tap_frames(n):
    key = bytes(16)
    frames = []
    for i in range(n):
        body = native.encode_body([native.Tap(i + 1, f"621311{i:013d}", 310001, i % 2, 0)])
        frames.append(native.encode_frame("G3100001", body, crypto.mac("x919", key, body)))
    return b"".join(frames)


def test_decode_onecard(benchmark, tap_frames, n):
    assert benchmark(decode_bodies, tap_frames) == n
    record(benchmark, "native decode (frame + messages)", "onecard", n)


def test_decode_msgspec(benchmark, tap_frames, n):
    def decode_all():
        out, pos = [], 0
        while pos < len(tap_frames):
            size = int.from_bytes(tap_frames[pos:pos + 4], "big")
            frame = native.decode_frame(tap_frames[pos + 4:pos + 4 + size])
            out.extend(native.decode_requests(frame.body))
            pos += 4 + size
        return out
    assert len(benchmark(decode_all)) == n
    record(benchmark, "native decode (frame + messages)", "peer", n)


def test_encode_onecard(benchmark, n):
    body = benchmark(encode_tap_replies, n)
    replies = native.decode_replies(body)
    assert len(replies) == n and replies[0] == native.TapReply(1, "00", 300, 1_000_000)
    record(benchmark, "native encode (replies)", "onecard", n)


def test_encode_msgspec(benchmark, n):
    body = benchmark(lambda: native.encode_body(
        [native.TapReply(i + 1, "00", 300 + i % 500, 1_000_000 - i) for i in range(n)]))
    assert native.decode_replies(body) == native.decode_replies(encode_tap_replies(n))
    record(benchmark, "native encode (replies)", "peer", n)
