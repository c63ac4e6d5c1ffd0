"""POS batch upload (0320, issue 16): after a 0500 answered "not balanced" the terminal uploads
its batch, one transaction per 0320 (network code 201) and then the end (202, field 48 the
count); each is journaled for clearing's reconciliation (below, and through the admin API in
tests/test_clearing_api.py). Bad input gets a clear code and journals nothing."""

import datetime as dt
import sqlite3

import numpy as np

from onecard.core.ledger import apply_records
from onecard.protocols import clearing
from onecard.protocols.journal import KIND_BY_NAME
from onecard.protocols.journal_codec import RECORD_DTYPE, view
from onecard.switch.clearing import exceptions
from onecard.switch.store import loader

from test_cutover import DAY, at

UPLOAD = KIND_BY_NAME["BATCH_UPLOAD"].value


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


def taken(world) -> tuple[int, bytes]:
    """Every record the engine has made (first number, packed): take() hands over only the
    records since the last take, so they are kept on the world."""
    first, data = world.engine.journal.take()
    if not hasattr(world, "taken"):
        world.taken = (first, b"")
    world.taken = (world.taken[0], world.taken[1] + bytes(data))
    return world.taken


def journal(world) -> np.ndarray:
    return np.frombuffer(taken(world)[1], dtype=RECORD_DTYPE)


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


# ---- reconciliation: the exceptions clearing finds ---------------------------------------

def _ref(world):
    from onecard.switch.clearing.reader import registry
    conn = sqlite3.connect(world.data_dir / "onecard.db")
    try:
        return registry(conn, world.state.cards["pan"].copy(), world.state.cards["region"])
    finally:
        conn.close()


def found(world) -> dict:
    """The exceptions of DAY from the engine's journal, by (kind, STAN)."""
    recs = journal(world)
    got = exceptions.find(recs, np.arange(len(recs)), _ref(world), DAY)
    return {(e.kind, e.seq): e for e in got}


def test_reversed_and_voided_transactions_reconcile_as_the_terminal_counts_them(world):
    at(world, 10)
    t = world.iso()
    pan, idx = world.card(31)
    other, _ = world.card(31, nth=1)
    world.state.cards["expiry_yymm"][idx] = 9912
    a, b, c = t.send(t.purchase(pan, 1_000), t.purchase(pan, 2_000), t.purchase(pan, 3_000))
    (rev,) = t.send(t.reversal(pan, 2_000, b["11"]))            # b is out of the batch
    (v,) = t.send(t.void(pan, 3_000, c["11"]))                  # c stays, its void credits
    assert [r["39"] for r in (a, b, c, rev, v)] == ["00"] * 5
    (s,) = t.send(t.settlement(1, 1, 0, 0))
    assert s["48"][-1] == "2"
    up = [t.upload(pan, 1_000, a["11"]), t.upload(pan, 3_000, c["11"]),
          t.upload(pan, 3_000, v["11"], proc="200000")]
    assert all(r["39"] == "00" for r in t.send(*up, t.upload_end(3)))
    assert found(world) == {}                                   # they agree
    # the terminal has the void's card wrong and counted one too many
    assert all(r["39"] == "00" for r in t.send(t.upload(other, 3_000, v["11"], proc="200000"),
                                               t.upload_end(4)))
    got = found(world)
    assert set(got) == {("CARD_MISMATCH", int(v["11"])), ("COUNT_MISMATCH", 0)}
    assert got[("CARD_MISMATCH", int(v["11"]))].card == pan[:6] + "*" * (len(pan) - 10) + \
        pan[-4:]


def test_a_batch_not_uploaded_is_an_exception_and_ids_are_stable(world):
    t, pan, (p1, p2) = unbalanced(world)
    got = found(world)
    assert list(got) == [("NOT_UPLOADED", 0)]
    e = got[("NOT_UPLOADED", 0)]
    assert e.id == f"20310520-NOT_UPLOADED-{t.info.tid}-7-0" and e.ref == 7
    assert exceptions.parse_id(e.id) == (DAY, "NOT_UPLOADED")
    t.send(t.upload(pan, 2_500, p2["11"], batch=7), t.upload_end(1, batch=7))
    again = found(world)
    assert list(again) == [("MISSING_AT_TERMINAL", int(p1["11"]))]
    m = again[("MISSING_AT_TERMINAL", int(p1["11"]))]
    assert (m.suggested_fen, m.suggested_direction, m.switch_amount_minor) == \
        (1_000, "acquirer_owes", 1_000)
    assert found(world) == again                                # the same journal, the same


def test_an_adjustment_resolves_its_exception_and_moves_money_on_its_own_date(world):
    from onecard.core import operations
    from onecard.switch.clearing.positions import positions

    t, pan, (p1, _) = unbalanced(world)
    t.send(t.upload(pan, 1_000, p1["11"], batch=7), t.upload_end(1, batch=7))
    (e,) = found(world).values()
    assert e.kind == "MISSING_AT_TERMINAL" and e.status == "open"
    at(world, 9, day=DAY + dt.timedelta(days=1))
    world.engine.tick()
    no = operations.adjust(world.engine.authoriser, e.terminal_idx, e.seq, e.card_idx, 2_500,
                           exception=clearing.EXCEPTION[e.kind], ref=e.ref,
                           direction=clearing.ADJUST_OWES, operator=3)
    (done,) = found(world).values()
    assert done.status == "resolved" and done.adjustment == exceptions.Adjustment(
        record_no=no, amount_fen=2_500, direction="acquirer_owes", operator=3,
        date=(DAY + dt.timedelta(days=1)).isoformat())
    recs = journal(world)
    nets = {p.party: p.net_fen for p in positions(recs, np.arange(len(recs)), _ref(world),
                                                   DAY + dt.timedelta(days=1)).positions}
    assert nets == {e.acquirer: -2_500, e.issuer: 2_500}
    balance = world.state.accounts["balance_fen"][world.state.cards["account"][e.card_idx]]
    first_no, data = taken(world)
    fresh = loader.load(world.data_dir)
    apply_records(fresh.state, data, first_no)                  # replays; no balance moved
    assert fresh.state.accounts["balance_fen"][fresh.state.cards["account"][e.card_idx]] == \
        balance
