"""Bad input never crashes the core: random and mutated frames through both protocol paths.
Every frame that can be delimited is answered; nothing is consumed past the buffer."""

import random
import time

import msgspec
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onecard.core import crypto, ledger
from onecard.core.engine import ISO8583, NATIVE
from onecard.core.state import (
    CARD_LOST,
    TERM_BUS_READER,
    TERM_KIOSK,
    TERM_MEDICAL,
    TERM_METRO_GATE,
    TERM_VENUE,
    TERM_VERIFIER,
)
from onecard.protocols import native
from onecard.switch.store import loader

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
def test_mutated_iso_requests(world, data):
    t = world.iso()
    pan, _ = world.card()
    build = data.draw(st.sampled_from([
        lambda: t.purchase(pan, 100), lambda: t.balance(pan),
        lambda: t.void(pan, 100, "000001"), lambda: t.reversal(pan, 100, "000001"),
        lambda: t.void_reversal(pan, 100, "000002"), lambda: t.settlement(100, 1, 0, 0),
        lambda: t.purchase(pan, 100, extra={"49": "344"})]))
    msg = bytearray(build())
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(2, len(msg) - 1))
        msg[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(13, len(msg) - 2))
    body = bytes(msg[2:2 + cut])
    consumed, replies, _, _ = world.engine.process(ISO8583, _prefixed(body, 2))
    assert consumed == len(body) + 2 and len(frames(replies, 2)) == 1


def signed_batch(world, t, messages: list) -> list:
    """Any list of messages, MessagePack-encoded and MACed as terminal t: the replies, after
    checking that the whole frame was consumed and the connection is kept."""
    body = msgspec.msgpack.encode(messages)
    frame = native.encode_frame(t.info.tid, body, crypto.mac(t.alg, t.mak, body))
    consumed, replies, _, close = world.engine.process(NATIVE, frame)
    assert consumed == len(frame) and not close
    (reply,) = [native.decode_frame(f) for f in frames(replies, 4)]
    return native.decode_replies(reply.body)


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=30) | st.binary(max_size=30),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=5),
                                                                      children, max_size=4),
    max_leaves=20)


@FUZZ
@given(st.lists(values, max_size=8))
def test_random_native_bodies_with_a_valid_mac(world, messages):
    decoded = signed_batch(world, world.native(TERM_BUS_READER), messages)
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


# ---- the services' messages with plausible and implausible fields -----------------------------

SERVICE_KINDS = (TERM_BUS_READER, TERM_METRO_GATE, TERM_KIOSK, TERM_MEDICAL, TERM_VENUE,
                 TERM_VERIFIER)


def field_values(pans: list[str]):
    return (st.sampled_from(pans) | st.integers(-(2**40), 2**40) | st.sampled_from([0, 1, 2])
            | st.text(max_size=20) | st.none() | st.binary(max_size=8))


@FUZZ
@given(st.data())
def test_service_messages_get_one_answer_each(world, data):
    """Tags 1-12 with 0-6 fields of any type, from every native terminal kind: each message
    gets its reply (or an ErrorReply naming the problem), in order."""
    kind = data.draw(st.sampled_from(SERVICE_KINDS))
    t = world.native(kind)
    pans = [world.card(nth=i)[0] for i in range(3)] + [world.card(status=CARD_LOST)[0]]
    fields = field_values(pans)
    messages = data.draw(st.lists(
        st.tuples(st.integers(2, 12), st.integers(1, 2**32 - 1),
                  st.lists(fields, max_size=6)).map(lambda m: [m[0], m[1], *m[2]]),
        min_size=1, max_size=12))
    decoded = signed_batch(world, t, messages)
    assert [r.seq for r in decoded] == [m[1] for m in messages]


def test_random_service_traffic_replays_exactly(world):
    """Thousands of random, mostly valid service messages from every kind of native terminal,
    then the journal replayed on the opening state gives the live state."""
    rng = random.Random(11)
    terms = {kind: world.native(kind) for kind in SERVICE_KINDS}
    gates = [t for t in world.terminals if t.kind == TERM_METRO_GATE and t.province == 31]
    pans = [world.card(nth=i)[0] for i in range(40)] + [world.card(44, nth=i)[0]
                                                        for i in range(5)]
    opening = []                                        # some nearly empty: 51 and the red
    for idx in rng.sample(range(40), 8):
        opening.append((world.card(nth=idx)[1], rng.randint(0, 300)))
        world.set_balance(*opening[-1])
    seqs: dict[int, list[int]] = {k: [] for k in SERVICE_KINDS}
    settled: list[tuple[int, str]] = []                 # (seq, card) of approved settlements
    now = int(time.time())
    for round_ in range(60):
        for kind, t in terms.items():
            batch = []
            for _ in range(rng.randint(1, 8)):
                pan, seq = rng.choice(pans), t.next_seq()
                if kind in (TERM_BUS_READER, TERM_METRO_GATE):
                    station = rng.choice(gates).station_id if kind == TERM_METRO_GATE else 0
                    if rng.random() < 0.3:
                        m = native.OfflineTap(100_000 + len(seqs[kind]), pan, station,
                                              rng.randint(0, 1), now - 3600 + round_)
                    elif rng.random() < 0.1:
                        m = native.DenyListSync(seq, rng.randint(0, 5))
                    else:
                        m = native.Tap(seq, pan, station, rng.randint(0, 1), 0)
                elif kind == TERM_KIOSK:
                    m = native.TopUp(seq, pan, rng.choice([1, 500, 20_000, 100_001]))
                elif kind == TERM_MEDICAL and settled and rng.random() < 0.3:
                    m = native.MedicalRefund(seq, *reversed(settled.pop()))
                elif kind == TERM_MEDICAL:
                    m = native.Medical(seq, pan, rng.randint(1, 400_000))
                elif kind == TERM_VENUE:
                    m = native.VenueEntry(seq, pan)
                else:
                    m = native.Verify(seq, pan)
                seqs[kind].append(seq)
                batch.append(m)
            if rng.random() < 0.1:
                batch.append(batch[0])                 # a retransmission inside the batch
            answers = t.send(batch)
            assert len(answers) == len(batch)
            settled += [(m.seq, m.card) for m, a in zip(batch, answers, strict=True)
                        if isinstance(m, native.Medical) and a.rc == "00"]
    first_no, blob = world.engine.journal.take()
    fresh = loader.load(world.data_dir)
    for card, fen in opening:                           # the same opening state
        fresh.state.accounts["balance_fen"][fresh.state.cards["account"][card]] = fen
    ledger.apply_records(fresh.state, blob, first_no)
    live, replayed = world.state.snapshot(), fresh.state.snapshot()
    for name in live:
        if name in ("daily_app", "medical_year", "filings"):
            live[name], replayed[name] = (np.sort(live[name], order="key"),
                                          np.sort(replayed[name], order="key"))
        assert np.array_equal(live[name], replayed[name]), name


@FUZZ
@given(st.data())
def test_complete_frames_followed_by_a_cut_one(world, data):
    """The path looks ahead into the frames that follow (to prefetch their cards): a buffer
    that ends inside a frame, anywhere, is answered up to it and the rest kept."""
    t = world.iso()
    pan, _ = world.card()
    whole = b"".join(t.purchase(pan, 100 + i) for i in range(data.draw(st.integers(0, 12))))
    tail = t.purchase(pan, 1)
    cut = tail[:data.draw(st.integers(1, len(tail) - 1))]
    consumed, replies, _, close = world.engine.process(ISO8583, whole + cut)
    assert consumed == len(whole) and not close
    assert len(frames(replies, 2)) == len(frames(whole, 2))
