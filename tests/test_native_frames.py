"""Native frames that msgspec itself would refuse are refused by the compiled path too (issue
13): bytes after the frame's array, and a terminal id that is not UTF-8 (never echoed)."""

import msgspec

from onecard.core import crypto
from onecard.core.engine import NATIVE
from onecard.core.state import TERM_BUS_READER
from onecard.protocols import native

from termsim import frames


def framed(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def only_error(world, data: bytes) -> tuple[native.Frame, native.ErrorReply]:
    """The one reply frame to ``data``, decoded strictly (msgspec), and its one ErrorReply."""
    consumed, replies, _, close = world.engine.process(NATIVE, data)
    assert consumed == len(data) and not close
    (raw,) = frames(replies, 4)
    frame = native.decode_frame(raw)                     # strict: UTF-8, no trailing bytes
    (reply,) = native.decode_replies(frame.body)
    assert isinstance(reply, native.ErrorReply)
    return frame, reply


def test_bytes_after_the_frame_array_are_refused_30_and_nothing_happens(world):
    t = world.native(TERM_BUS_READER)
    pan, idx = world.card()
    before = world.balance(idx)
    good = t.frame([t.tap(pan)])
    frame, reply = only_error(world, framed(good[4:] + b"\xc0"))     # one trailing nil
    assert reply.rc == "30" and "after the frame" in reply.message
    assert frame.terminal == t.info.tid
    assert world.balance(idx) == before
    with_junk = framed(good[4:] + b"\x00" * 9)
    assert only_error(world, with_junk)[1].rc == "30"
    (tap,) = t.send([t.tap(pan)])                        # the connection carries on
    assert tap.rc == "00" and world.balance(idx) < before


def test_an_extra_element_inside_the_frame_array_is_still_skipped(world):
    """A later frame version may add elements after mac (msgspec's array_like skips them)."""
    t = world.native(TERM_BUS_READER)
    body = native.encode_body([native.Heartbeat(t.next_seq())])
    payload = msgspec.msgpack.encode([native.VERSION, t.info.tid, body,
                                      crypto.mac(t.alg, t.mak, body), {"future": 1}])
    _, replies, _, _ = world.engine.process(NATIVE, framed(payload))
    (raw,) = frames(replies, 4)
    (hb,) = native.decode_replies(native.decode_frame(raw).body)
    assert isinstance(hb, native.HeartbeatReply) and hb.rc == "00"


def test_terminal_id_not_utf8_is_refused_and_not_echoed(world):
    t = world.native(TERM_BUS_READER)
    body = native.encode_body([native.Heartbeat(t.next_seq())])
    mac = crypto.mac(t.alg, t.mak, body)
    for bad_tid in (b"\xff" * 8, b"ABCDEF\xc3(", b"ABCDE\xed\xa0\x80",      # surrogate
                    b"ABCDEFG\xc3", b"ABCD\xf0\x82\x82\xac"):               # cut off, overlong
        assert len(bad_tid) == 8
        payload = (b"\x94" + msgspec.msgpack.encode(native.VERSION) + b"\xa8" + bad_tid
                   + msgspec.msgpack.encode(body) + msgspec.msgpack.encode(mac))
        frame, reply = only_error(world, framed(payload))
        assert reply.rc == "30" and "UTF-8" in reply.message, bad_tid
        assert frame.terminal == ""


def test_terminal_id_in_valid_utf8_is_looked_up_as_before(world):
    """Valid UTF-8 that names no terminal is still 'unknown terminal', echoed."""
    t = world.native(TERM_BUS_READER)
    (r,) = t.send([native.Heartbeat(t.next_seq())], tid="卡机ab")       # 8 bytes of UTF-8
    assert r.rc == "03"
