"""Native protocol through the compiled path, with frames built and read by msgspec."""

import sqlite3

import msgspec
import pytest

from onecard.core import crypto
from onecard.core.engine import NATIVE
from onecard.core.state import (
    HOLDER_DISABLED,
    TERM_BUS_READER,
    TERM_METRO_GATE,
    TERM_POS,
    TERM_VERIFIER,
)
from onecard.protocols import native
from onecard.switch.reference import SHANGHAI

from termsim import NativeTerminal, frames


def gate(world, line: str, name: str) -> NativeTerminal:
    conn = sqlite3.connect(world.data_dir / "onecard.db")
    (sid,) = conn.execute("SELECT id FROM stations WHERE line=? AND name=?", (line, name)
                          ).fetchone()
    conn.close()
    info = next(t for t in world.terminals if t.kind == TERM_METRO_GATE and t.station_id == sid)
    t = NativeTerminal(info, world.exchange(NATIVE))
    assert t.signon().rc == "00"
    return t


def test_signon_reply_is_maced_with_master_key(world):
    t = NativeTerminal(world.terminal(TERM_BUS_READER), world.exchange(NATIVE))
    body = native.encode_body([native.SignOn(1)])
    (frame,) = t.send_raw(native.encode_frame(t.info.tid, body,
                                              crypto.mac(t.alg, t.info.tmk, body)))
    assert frame.mac == crypto.mac(t.alg, t.info.tmk, frame.body)
    (reply,) = native.decode_replies(frame.body)
    assert isinstance(reply, native.SignOnReply) and reply.rc == "00" and len(reply.keys) == 20


def test_replies_are_maced_with_working_key(world):
    t = world.native(TERM_BUS_READER)
    (frame,) = t.send_raw(t.frame([native.Heartbeat(t.next_seq())]))
    assert frame.mac == crypto.mac(t.alg, t.mak, frame.body)
    (hb,) = native.decode_replies(frame.body)
    assert isinstance(hb, native.HeartbeatReply) and hb.rc == "00" and hb.time_s > 1.7e9


def test_bus_tap_charges_flat_fare(world):
    t = world.native(TERM_BUS_READER)
    pan, idx = world.card(birth_day=lambda b: b > 30000)     # born after 1982: no concession
    before = world.balance(idx)
    (r,) = t.send([t.tap(pan)])
    assert isinstance(r, native.TapReply) and r.rc == "00"
    assert r.fare_fen == 200 and r.balance_fen == before - 200 == world.balance(idx)


def test_elderly_and_disabled_ride_free_in_shanghai(world):
    t = world.native(TERM_BUS_READER)
    elderly, _ = world.card(birth_day=lambda b: b < 15000)    # born before 1941
    young, yidx = world.card(birth_day=lambda b: b > 30000, nth=1)
    world.state.accounts["flags"][world.state.cards["account"][yidx]] |= HOLDER_DISABLED
    (a, b) = t.send([t.tap(elderly), t.tap(young)])
    assert (a.rc, a.fare_fen) == ("00", 0)
    assert (b.rc, b.fare_fen) == ("00", 0)


def test_metro_fare_by_distance_bands_across_lines(world):
    entry = gate(world, "1号线", "莘庄")
    exit_ = gate(world, "2号线", "陆家嘴")
    pan, idx = world.card(birth_day=lambda b: b > 30000)
    before = world.balance(idx)
    (tin,) = entry.send([entry.tap(pan, entry.info.station_id, native.TAP_IN)])
    assert (tin.rc, tin.fare_fen) == ("00", 0)
    (tout,) = exit_.send([exit_.tap(pan, exit_.info.station_id, native.TAP_OUT)])
    # 15.3 km on line 1 to 人民广场, then 2.6 km on line 2: 17.9 km
    assert tout.rc == "00" and tout.fare_fen == SHANGHAI.fare_fen(17.9) == 500
    assert world.balance(idx) == before - 500


def test_missing_tap_out_charges_maximum_fare_at_next_tap(world):
    entry = gate(world, "1号线", "莘庄")
    pan, idx = world.card(birth_day=lambda b: b > 30000)
    before = world.balance(idx)
    entry.send([entry.tap(pan, entry.info.station_id, native.TAP_IN)])
    (again,) = entry.send([entry.tap(pan, entry.info.station_id, native.TAP_IN)])
    op = world.state.operators[world.state.terminals["operator"][
        world.state.terminal_index(entry.info.tid)]]
    assert again.rc == "00" and again.fare_fen == op["fare_fen_max"] > 300
    assert world.balance(idx) == before - op["fare_fen_max"]


def test_tap_out_without_tap_in_charges_maximum_fare(world):
    exit_ = gate(world, "2号线", "陆家嘴")
    pan, _ = world.card(birth_day=lambda b: b > 30000)
    (r,) = exit_.send([exit_.tap(pan, exit_.info.station_id, native.TAP_OUT)])
    assert r.rc == "00" and r.fare_fen > 500


def test_tap_out_with_too_little_money_keeps_gate_shut_and_trip_open(world):
    entry = gate(world, "1号线", "莘庄")
    exit_ = gate(world, "2号线", "陆家嘴")
    pan, idx = world.card(birth_day=lambda b: b > 30000)
    entry.send([entry.tap(pan, entry.info.station_id, native.TAP_IN)])
    world.set_balance(idx, 450)
    (r,) = exit_.send([exit_.tap(pan, exit_.info.station_id, native.TAP_OUT)])
    assert r.rc == "51" and world.balance(idx) == 450
    world.set_balance(idx, 10_000)                        # topped up at the service desk
    (r,) = exit_.send([exit_.tap(pan, exit_.info.station_id, native.TAP_OUT)])
    assert r.rc == "00" and r.fare_fen == 500


def test_verify_returns_masked_name_and_age_band_only(world):
    t = world.native(TERM_VERIFIER)
    pan, idx = world.card(birth_day=lambda b: b > 30000)
    (r,) = t.send([t.verify(pan)])
    full = world.names[idx]
    assert isinstance(r, native.VerifyReply) and r.rc == "00"
    assert r.name[0] == full[0] and full not in r.name
    assert len(r.name) == len(full) and r.name.endswith("*")
    assert native.AGE_BANDS[r.age_band] in ("under 18", "18-59")
    assert r.id_number == "" and r.region == int(world.state.regions["code"][
        world.state.cards["region"][idx]])


def test_batch_frame_answers_every_message_in_order(world):
    t = world.native(TERM_BUS_READER)
    cards = [world.card(nth=i)[0] for i in range(5)]
    taps = [t.tap(c) for c in cards]
    replies = t.send(taps)
    assert [r.seq for r in replies] == [m.seq for m in taps]
    assert all(r.rc == "00" for r in replies)


def test_duplicate_sequence_is_answered_once(world):
    t = world.native(TERM_BUS_READER)
    pan, idx = world.card()
    before = world.balance(idx)
    tap = t.tap(pan)
    (a,) = t.send([tap])
    (b,) = t.send([tap])
    (c,) = t.send([native.Tap(tap.seq, world.card(nth=3)[0], 0, 0, 0)])
    assert a == b and c.rc == "94"
    assert world.balance(idx) == before - a.fare_fen


def test_verifier_may_not_tap(world):
    t = world.native(TERM_VERIFIER)
    pan, _ = world.card()
    (r,) = t.send([t.tap(pan)])
    assert r.rc == "58"


def test_frame_errors(world):
    t = world.native(TERM_BUS_READER)
    pan, idx = world.card()
    before = world.balance(idx)
    (bad_mac,) = t.send([t.tap(pan)], key=b"\x01" * 16)
    assert isinstance(bad_mac, native.ErrorReply) and bad_mac.rc == "A0"
    (unknown,) = t.send([t.tap(pan)], tid="Z0000000")
    assert unknown.rc == "03"
    pos = NativeTerminal(world.terminal(TERM_POS), world.exchange(NATIVE), mak=b"\0" * 16)
    (wrong_proto,) = pos.send([native.Heartbeat(1)])
    assert wrong_proto.rc == "58"
    assert world.balance(idx) == before
    not_signed = NativeTerminal(world.terminal(TERM_BUS_READER, index=1), world.exchange(NATIVE),
                                mak=b"\0" * 16)
    (r,) = not_signed.send([native.Heartbeat(1)])
    assert r.rc == "A0" and "signed on" in r.message


def test_schema_error_names_the_message_and_the_rest_goes_on(world):
    t = world.native(TERM_BUS_READER)
    pan, _ = world.card()
    body = msgspec.msgpack.encode([[3, 41, pan, 0, 7, 0], [3, 42, "12AB", 0, 0, 0],
                                   [42, 43], [3, 44, pan, 0, 0, 0]])
    (frame,) = t.send_raw(native.encode_frame(t.info.tid, body, crypto.mac(t.alg, t.mak, body)))
    replies = native.decode_replies(frame.body)
    assert [(r.seq, r.rc) for r in replies] == [(41, "30"), (42, "30"), (43, "12"), (44, "00")]
    assert "direction" in replies[0].message and "card" in replies[1].message


def test_garbage_body_and_versions(world):
    t = world.native(TERM_BUS_READER)
    body = b"\x92\x03"                                   # array of 2 with only one element
    (frame,) = t.send_raw(native.encode_frame(t.info.tid, body, crypto.mac(t.alg, t.mak, body)))
    first, last = native.decode_replies(frame.body)
    assert (first.rc, last.rc) == ("30", "30")
    assert "not an array" in first.message and "not valid MessagePack" in last.message
    payload = msgspec.msgpack.encode([2, t.info.tid, b"", b""])
    (frame,) = t.send_raw(len(payload).to_bytes(4, "big") + payload)
    (r,) = native.decode_replies(frame.body)
    assert r.rc == "30" and "version" in r.message


def test_unframeable_stream_is_answered_then_closed(world):
    _, replies, _, close = world.engine.process(NATIVE, (1 << 30).to_bytes(4, "big"))
    assert close
    (frame,) = [native.decode_frame(f) for f in frames(replies, 4)]
    (r,) = native.decode_replies(frame.body)
    assert r.rc == "30"


@pytest.mark.parametrize("cut", [1, 3, 5, 20])
def test_partial_frames_wait_for_the_rest(world, cut):
    t = world.native(TERM_BUS_READER)
    data = t.frame([native.Heartbeat(t.next_seq())])
    consumed, replies, _, close = world.engine.process(NATIVE, data[:cut])
    assert (consumed, replies, close) == (0, b"", False)
    consumed, replies, _, _ = world.engine.process(NATIVE, data)
    assert consumed == len(data) and replies


def test_empty_frame_is_answered_and_the_link_stays(world):
    t = world.native(TERM_BUS_READER)
    consumed, replies, _, close = world.engine.process(NATIVE, b"\0\0\0\0")
    assert consumed == 4 and not close
    (frame,) = [native.decode_frame(f) for f in frames(replies, 4)]
    (r,) = native.decode_replies(frame.body)
    assert r.rc == "30"
    (hb,) = t.send([native.Heartbeat(t.next_seq())])
    assert hb.rc == "00"
