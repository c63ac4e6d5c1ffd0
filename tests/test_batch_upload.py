"""POS batch upload (0320, issue 16): after a 0500 answered "not balanced" the terminal uploads
its batch, one transaction per 0320 (network code 201) and then the end (202, field 48 the
count); each is journaled for clearing's reconciliation (tests/test_reconcile.py). Bad input
gets a clear code and journals nothing."""

import datetime as dt
import time

import numpy as np

from onecard.core.ledger import apply_records
from onecard.protocols import clearing
from onecard.protocols.journal import KIND_BY_NAME
from onecard.protocols.journal_codec import RECORD_DTYPE, view
from onecard.switch import loader

DAY = dt.date(2031, 5, 20)
UPLOAD = KIND_BY_NAME["BATCH_UPLOAD"].value


def at(world, hour: int, day: dt.date = DAY) -> None:
    when = dt.datetime.combine(day, dt.time(hour), clearing.CST)
    world.engine.clock_offset_us = int(when.timestamp() * 1e6) - time.time_ns() // 1000


def unbalanced(world):
    """A terminal with two purchases whose 0500 claims only one: (terminal, card, replies)."""
    at(world, 12)
    t = world.iso()
    pan, idx = world.card(31)
    world.state.cards["expiry_yymm"][idx] = 9912
    replies = t.send(t.purchase(pan, 1_000), t.purchase(pan, 2_500))
    assert [r["39"] for r in replies] == ["00", "00"]
    (s,) = t.send(t.settlement(1_000, 1, 0, 0, batch=7))
    assert (s["39"], s["48"][-1]) == ("00", "2")            # not balanced
    t.card_idx = idx
    return t, pan, replies


def journal(world) -> np.ndarray:
    _, data = world.engine.journal.take()
    return np.frombuffer(bytes(data), dtype=RECORD_DTYPE)


def test_an_unbalanced_batch_is_uploaded_and_journaled(world):
    t, pan, (p1, p2) = unbalanced(world)
    replies = t.send(t.upload(pan, 1_000, p1["11"], batch=7),
                     t.upload(pan, 2_500, p2["11"], batch=7), t.upload_end(2, batch=7))
    assert [(r["t"], r["39"]) for r in replies] == [("0330", "00")] * 3
    assert all(t.verify_reply_mac(r) for r in replies)
    recs = journal(world)
    up = recs[recs["kind"] == UPLOAD]
    u = view(up, "upload")
    assert list(u["batch_no"]) == [7, 7, 7]
    assert list(u["orig_kind"]) == [KIND_BY_NAME["PURCHASE"].value] * 2 + [0]
    assert list(u["amount_asked_minor"]) == [1_000, 2_500, 0]
    assert int(u["count"][2]) == 2
    assert str(int(u["pan_masked"][0])) == pan[:6] + pan[-4:]
    assert int(u["pan_len"][0]) == len(pan)
    idx = t.card_idx
    assert list(up["card"][:2]) == [idx, idx] and int(up["account"][0]) == 0xFFFFFFFF
    # no money moved: the account is where the purchases left it
    assert world.state.accounts["balance_fen"][world.state.cards["account"][idx]] == \
        recs["balance_fen_after"][recs["kind"] == KIND_BY_NAME["PURCHASE"].value][-1]


def test_uploads_survive_replay_and_the_upload_stays_open_until_the_next_settlement(world):
    t, pan, (p1, _) = unbalanced(world)
    first_no, data = world.engine.journal.take()
    fresh = loader.load(world.data_dir)
    apply_records(fresh.state, data, first_no)
    assert fresh.state.terminals["upload_open"][t.info.idx] == 1
    (r,) = t.send(t.upload(pan, 1_000, p1["11"], batch=7))
    assert r["39"] == "00"
    (s,) = t.send(t.settlement(0, 0, 0, 0, batch=8))
    assert s["48"][-1] == "1"                                 # balanced: nothing to upload
    (late,) = t.send(t.upload(pan, 1_000, p1["11"], batch=7))
    assert late["39"] == "95"


def test_bad_uploads_get_clear_codes_and_journal_nothing(world):
    t, pan, (p1, _) = unbalanced(world)
    before = world.engine.journal.next_no
    cases = [
        (t.upload(pan, 1_000, p1["11"], batch=6), "95", None),         # not the batch settled
        (t.upload(pan, 1_000, p1["11"], batch=7, extra={"15": "0521"}), "80", None),  # future
        (t.upload_end("12X4", batch=7), "30", "F48"),                   # malformed totals
        (t.upload_end("123", batch=7), "30", "F48"),
        (t.upload(pan, 1_000, p1["11"], batch=7, proc="310000"), "30", "F3"),
        (t.upload(pan, 1_000, p1["11"], batch=7, extra={"60": "0000000799"}), "30", "F60"),
        (t.upload(pan, 1_000, p1["11"], batch=7, extra={"15": "1340"}), "30", "F15"),
        (t.build("0320", {"11": "000123", "60": "00000007201"}), "30", "M3"),
        (t.build("0320", {"11": "000124", "60": "00000007202"}), "30", "M48"),
    ]
    for request, code, text in cases:
        (reply,) = t.send(request)
        assert (reply["t"], reply["39"], reply.get("44")) == ("0330", code, text), reply
    assert world.engine.journal.next_no == before
    # last year's date (a December batch uploaded in May is not "to come") is accepted
    (ok,) = t.send(t.upload(pan, 1_000, p1["11"], batch=7, extra={"15": "1231"}))
    assert ok["39"] == "00"


def test_a_terminal_without_an_unbalanced_batch_cannot_upload(world):
    at(world, 12)
    t = world.iso()
    pan, _ = world.card(31)
    (r,) = t.send(t.upload(pan, 1_000, "000001", batch=1))
    assert r["39"] == "95"
    (bad_mac,) = t.send(t.build("0320", {"2": pan, "3": "000000", "4": "000000001000",
                                         "11": "000001", "60": "00000001201"},
                                mak=b"\0" * 16))
    assert bad_mac["39"] == "A0"
