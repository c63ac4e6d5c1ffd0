"""Bad input never crashes the core: random and mutated frames through both protocol paths.
Every frame that can be delimited is answered; nothing is consumed past the buffer."""

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onecard.core import crypto
from onecard.core.engine import ISO8583, NATIVE
from onecard.core.state import TERM_BUS_READER
from onecard.protocols import native

from termsim import frames

FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _prefixed(body: bytes, width: int) -> bytes:
    return len(body).to_bytes(width, "big") + body


@FUZZ
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_random_iso_frames(world, bodies):
    data = b"".join(_prefixed(b, 2) for b in bodies)
    consumed, replies, _, close = world.engine.process(ISO8583, data)
    assert consumed == len(data) and not close
    assert len(frames(replies, 2)) == len(bodies)


@FUZZ
@given(st.data())
def test_mutated_iso_purchases(world, data):
    t = world.iso()
    pan, _ = world.card()
    msg = bytearray(t.purchase(pan, 100))
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(2, len(msg) - 1))
        msg[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(13, len(msg) - 2))
    body = bytes(msg[2:2 + cut])
    consumed, replies, _, _ = world.engine.process(ISO8583, _prefixed(body, 2))
    assert consumed == len(body) + 2 and len(frames(replies, 2)) == 1


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=30) | st.binary(max_size=30),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=5),
                                                                      children, max_size=4),
    max_leaves=20)


@FUZZ
@given(st.lists(values, max_size=8))
def test_random_native_bodies_with_a_valid_mac(world, messages):
    t = world.native(TERM_BUS_READER)
    body = msgspec.msgpack.encode(messages)
    frame = native.encode_frame(t.info.tid, body, crypto.mac(t.alg, t.mak, body))
    consumed, replies, _, close = world.engine.process(NATIVE, frame)
    assert consumed == len(frame) and not close
    (reply,) = [native.decode_frame(f) for f in frames(replies, 4)]
    decoded = native.decode_replies(reply.body)
    assert all(isinstance(r, native.Reply) for r in decoded)


@FUZZ
@given(st.binary(max_size=200))
def test_random_native_payloads(world, payload):
    frame = _prefixed(payload, 4)
    consumed, replies, _, _ = world.engine.process(NATIVE, frame)
    assert consumed == len(frame)
    (reply,) = [native.decode_frame(f) for f in frames(replies, 4)]
    (err,) = native.decode_replies(reply.body)
    assert err.rc in ("30", "03", "58", "A0")
