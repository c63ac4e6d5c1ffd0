"""Load shedding (issue 13): a refused buffer is answered 96 frame by frame in one core call,
and nothing else happens: no journal record, no ring slot, no balance change, no clock; and
in a switch process, requests over the latency budget get those fast 96s, counted in
/metrics."""

import socket
import threading
import time
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from onecard.core.engine import ISO8583, NATIVE, REFUSE_JOURNAL, REFUSE_OVERLOAD
from onecard.core.state import TERM_BUS_READER, TERM_POS
from onecard.protocols import native

from conftest import start_switch
from termsim import IsoTerminal, iso_decode, socket_exchange


def split_iso(data: bytes) -> list[dict]:
    out = []
    while data:
        n = int.from_bytes(data[:2], "big")
        out.append(iso_decode(data[2:2 + n]))
        data = data[2 + n:]
    return out


def split_native(data: bytes) -> list:
    out = []
    while data:
        n = int.from_bytes(data[:4], "big")
        frame = native.decode_frame(data[4:4 + n])
        out.append((frame, native.decode_replies(frame.body)))
        data = data[4 + n:]
    return out


def test_refused_iso_buffer_gets_96_per_frame_and_changes_nothing(world):
    t = world.iso()
    pan, idx = world.card()
    before = world.balance(idx)
    next_no = world.engine.journal.next_no
    stans = [t.next_stan() for _ in range(40)]
    requests = [t.purchase(pan, 100, stan=s) for s in stans]
    buffer = b"".join(requests) + requests[0][:7]              # and half a frame
    consumed, replies, batch, close = world.engine.refuse(ISO8583, buffer, REFUSE_OVERLOAD)
    assert consumed == len(buffer) - 7 and not close and batch == -1
    decoded = split_iso(replies)
    assert [r["11"] for r in decoded] == stans
    assert all(r["39"] == "96" and r["41"] == t.info.tid and "64" not in r for r in decoded)
    assert world.engine.journal.next_no == next_no              # no record
    assert world.balance(idx) == before
    assert int(world.engine.shed[ISO8583, REFUSE_OVERLOAD]) == 40
    # Not a ring slot either: the same STANs are new requests once admitted again.
    again = t.send(*[t.purchase(pan, 100, stan=s) for s in stans[:3]])
    assert [r["39"] for r in again] == ["00"] * 3
    assert world.balance(idx) == before - 300


def test_refused_native_messages_get_an_error_reply_each_and_change_nothing(world):
    t = world.native(TERM_BUS_READER)
    pan, idx = world.card()
    before = world.balance(idx)
    next_no = world.engine.journal.next_no
    batches = [[t.tap(pan), t.tap(pan)] for _ in range(5)]
    frames = [t.frame(b) for b in batches]
    consumed, replies, batch, close = world.engine.refuse(NATIVE, b"".join(frames), REFUSE_JOURNAL)
    assert consumed == sum(map(len, frames)) and not close and batch == -1
    answered = split_native(replies)
    assert len(answered) == 5
    for batch, (frame, errors) in zip(batches, answered, strict=True):
        assert frame.terminal == t.info.tid and frame.mac == b""
        assert [e.seq for e in errors] == [m.seq for m in batch]      # each by its own seq
        for err in errors:
            assert type(err).__name__ == "ErrorReply" and err.rc == "96"
            assert "journal" in err.message
    assert world.engine.journal.next_no == next_no
    assert world.balance(idx) == before
    assert int(world.engine.shed[NATIVE, REFUSE_JOURNAL]) == 10
    # A body that cannot be read as far as each message's seq: one ErrorReply, seq 0.
    bad = native.encode_frame(t.info.tid, b"\x91\xc1", b"")
    _, replies, _, close = world.engine.refuse(NATIVE, bad, REFUSE_OVERLOAD)
    ((_, (err,)),) = split_native(replies)
    assert err.seq == 0 and err.rc == "96" and not close


def test_an_unframeable_stream_is_still_closed_while_refusing(world):
    consumed, replies, _, close = world.engine.refuse(ISO8583, b"\xff\xff" + b"x" * 10,
                                                   REFUSE_OVERLOAD)
    assert close and consumed == 0 and replies == b""
    consumed, replies, _, close = world.engine.refuse(NATIVE, b"GET / HTTP/1.1\r\n\r\n",
                                                   REFUSE_OVERLOAD)
    assert close
    ((_, (err,)),) = split_native(replies)
    assert err.rc == "30"


def metric(sw, family: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{sw.http}/metrics", timeout=10) as r:
        text = r.read().decode()
    for f in text_string_to_metric_families(text):
        if f.name == family:
            return {tuple(sorted(s.labels.items())): s.value for s in f.samples
                    if not s.name.endswith("_created")}
    return {}


@pytest.mark.slow
def test_requests_over_the_budget_get_fast_96s_and_admission_resumes(switch_dir, tmp_path,
                                                                       world):
    """A budget of 10 ms, and 20,000 purchases sent back to back: more than the budget's
    worth waits in the socket, so the oldest buffers are refused. Every reply
    arrives, in order; the 96s moved no money (the balance afterwards counts only the 00s);
    once the load is gone requests are approved again."""
    cfg = tmp_path / "onecard.toml"
    cfg.write_text("[server]\nlatency_budget_ms = 10\n")
    sw = start_switch(switch_dir, "--config", str(cfg))
    try:
        sock, exchange = socket_exchange("127.0.0.1", sw.iso, 2)
        t = IsoTerminal(world.terminal(TERM_POS, 31, 0), exchange)
        assert until_approved(lambda: t.signon())["39"] == "00"   # (a busy VM may lag 10 ms)
        pan, idx = world.card()
        before = world.balance(idx)
        batches = [b"".join(t.purchase(pan, 1, stan=t.next_stan()) for _ in range(5000))
                   for _ in range(4)]
        key = (("protocol", "iso8583"), ("reason", "overload"))
        shed_before = metric(sw, "onecard_requests_shed")[key]
        sender = threading.Thread(target=lambda: [sock.sendall(b) for b in batches])
        sender.start()
        replies = read_iso(sock, 20_000)
        sender.join()
        stans = [r["11"] for r in replies]
        assert stans == sorted(stans, key=int)                  # in order, all answered
        codes = Counter(r["39"] for r in replies)
        assert codes["96"] > 0 and codes["00"] > 0 and set(codes) == {"00", "96"}, codes
        assert metric(sw, "onecard_requests_shed")[key] - shed_before == codes["96"]
        (reply,) = until_approved(lambda: t.send(t.balance(pan)))   # the budget is met again
        assert reply["39"] == "00"
        sign = -1 if reply["54"][7] == "D" else 1
        assert sign * int(reply["54"][8:]) == before - codes["00"]     # 96s moved no money
        sock.close()
    finally:
        sw.stop()


def until_approved(request, tries: int = 100):
    """A request repeated (a 96 changes nothing) until it is not shed."""
    for _ in range(tries):
        reply = request()
        if (reply[0] if isinstance(reply, list) else reply)["39"] != "96":
            return reply
        time.sleep(0.05)
    return reply


def read_iso(sock: socket.socket, count: int) -> list[dict]:
    """``count`` replies, read raw first (decoding as they come would make this reader, not
    the switch, the bottleneck) and decoded after."""
    buf = bytearray()
    frames = 0
    at = 0
    while frames < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
        while len(buf) - at >= 2:
            n = int.from_bytes(buf[at:at + 2], "big")
            if len(buf) - at < 2 + n:
                break
            at += 2 + n
            frames += 1
    return split_iso(bytes(buf[:at]))


def test_while_shedding_a_retransmission_gets_its_original_answer(world):
    """Item 4 of issue 27: a retransmission costs no new work (no decision, no record), so
    it is answered as the first time even while new requests are refused 96: from the ring,
    and from the horizon after the ring moved on. A new request in the same buffer is 96."""
    t = world.iso()
    pan, idx = world.card()
    first = t.send(t.purchase(pan, 100, stan="000050"))[0]
    for _ in range(3):                                  # 150 requests: out of the 64-slot ring
        t.send(*[t.purchase(pan, 1) for _ in range(50)])
    last_stan = f"{t.stan - 1:06d}"
    charged, next_no = world.balance(idx), world.engine.journal.next_no
    buffer = (t.purchase(pan, 100, stan="000050") + t.purchase(pan, 1, stan=last_stan)
              + t.purchase(pan, 5, stan="900000"))
    consumed, replies, batch, close = world.engine.refuse(ISO8583, buffer, REFUSE_OVERLOAD)
    assert consumed == len(buffer) and not close and batch > 0
    old, recent, new = split_iso(replies)
    assert (old["39"], old["37"], old["38"]) == ("00", first["37"], first["38"])
    assert t.verify_reply_mac(old)                      # answered with its MAC, as first
    assert recent["39"] == "00" and recent["11"] == last_stan
    assert new["39"] == "96" and "64" not in new
    assert world.balance(idx) == charged and world.engine.journal.next_no == next_no
    # A retransmission with a wrong MAC is not answered from the ring: A0.
    forged = bytearray(t.purchase(pan, 100, stan="000050"))
    forged[-1] ^= 1
    _, replies, _, _ = world.engine.refuse(ISO8583, bytes(forged), REFUSE_OVERLOAD)
    assert split_iso(replies)[0]["39"] == "A0"
    # With the journal unwritable, everything is refused (its answers could not be released).
    _, replies, batch, _ = world.engine.refuse(ISO8583, t.purchase(pan, 100, stan="000050"),
                                               REFUSE_JOURNAL)
    assert split_iso(replies)[0]["39"] == "96" and batch == -1


def test_while_shedding_a_native_retransmission_gets_its_original_answer(world):
    t = world.native(TERM_BUS_READER)
    pan, idx = world.card()
    tap = t.tap(pan)
    (first,) = t.send([tap])
    assert first.rc == "00"
    charged, next_no = world.balance(idx), world.engine.journal.next_no
    new = t.tap(pan)
    _, replies, batch, _ = world.engine.refuse(NATIVE, t.frame([tap, new]), REFUSE_OVERLOAD)
    ((_, (again, refused)),) = split_native(replies)
    assert batch > 0 and (again.rc, again.seq) == ("00", first.seq)
    assert refused.rc == "96" and refused.seq == new.seq
    assert world.balance(idx) == charged and world.engine.journal.next_no == next_no
