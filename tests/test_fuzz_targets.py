"""The fuzz targets of bench/fuzz.py over their committed corpus (no atheris needed), the
regression found by fuzzing the codecs' entry points, and two findings left to issue 13."""

from __future__ import annotations

import iso8583
import pytest

from onecard.bench import fuzz
from onecard.bench.sim.terminals import SPEC, split_frames
from onecard.core import native_msg
from onecard.core.engine import ISO8583, NATIVE
from onecard.protocols import native


@pytest.mark.parametrize("name", sorted(fuzz.TARGETS))
def test_each_target_takes_its_corpus(name):
    items = fuzz.corpus(name)
    assert len(items) >= 18
    for data in items:
        fuzz.TARGETS[name](data)


def test_the_corpus_reaches_authorisation():
    """Most corpus frames carry valid MACs: the fuzzer starts from approvals, not A0s."""
    h = fuzz.harness()
    codes = []
    for data in fuzz.corpus("iso"):
        _, replies, _, _ = h.engine.process(ISO8583, fuzz._remac_iso(h, data[1:]))
        h.engine.journal.take()
        codes += [iso8583.decode(bytearray(f), SPEC)[0]["39"] for f in split_frames(replies, 2)]
    assert codes.count("00") >= len(codes) // 2, codes


def test_decoding_bodies_never_reads_past_a_cut_frame():
    """Found by fuzzing native_msg.decode_bodies: a length prefix longer than what is left
    was read past the buffer's end (a crash, or messages counted from beyond the buffer)."""
    body = native.encode_body([native.Tap(1, "6212345678901234567", 0, 0, 0)])
    frame = native.encode_frame("G3100001", body, bytes(8))
    two = frame + frame
    assert native_msg.decode_bodies(two) == 2
    assert native_msg.decode_bodies(memoryview(two)[:len(frame) + 6]) == 1
    assert native_msg.decode_bodies(memoryview(two)[:len(frame) + 4]) == 1


def test_a_terminal_id_that_is_not_utf8_gets_a_reply_that_parses():
    h = fuzz.harness()
    gate = next(iter(h.natives.values()))
    frame = gate.frame([native.Heartbeat(99)])
    bad = frame.replace(gate.info.tid.encode(), gate.info.tid.encode()[:3] + b"\xff"
                        + gate.info.tid.encode()[4:])
    _, replies, _, _ = h.engine.process(NATIVE, bad)
    (raw,) = split_frames(replies, 4)
    native.decode_frame(raw)              # was msgspec.DecodeError: invalid UTF-8 echoed


def test_a_merchant_id_that_is_not_text_is_refused():
    h = fuzz.harness()
    frame = h.pos.purchase(h.pans[0], 100, "000123")
    merchant = h.pos.info.merchant.encode()
    bad = fuzz._remac_iso(h, frame.replace(merchant, b"\xff" + merchant[1:]))
    _, replies, _, _ = h.engine.process(ISO8583, bad)
    h.engine.journal.take()
    (reply,) = split_frames(replies, 2)
    doc, _ = iso8583.decode(bytearray(reply), SPEC)
    assert doc["39"] == "30"
