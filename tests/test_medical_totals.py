"""Medical institutions' daily totals (issue 16, 3201-style native MedicalTotals): journaled
as sent, compared by clearing with the switch's records of the date; bad input refused with
nothing journaled; a retransmission answered as the original, before and after a restart.

Expected totals are the sums of what the switch answered the terminal, never its own totals.
"""

import datetime as dt
import time

import numpy as np
import pytest

from onecard.core.journal import unpack
from onecard.core.state import KIND_MEDICAL, TERM_MEDICAL, TERM_VERIFIER
from onecard.protocols import clearing, native
from onecard.protocols.codes import CODE_INDEX
from onecard.protocols.journal import KIND_BY_NAME, NONE
from onecard.protocols.journal_codec import DTYPES, RECORD_DTYPE, view
from onecard.switch import cli
from onecard.switch.clearing.medical import MedicalDifference, totals_differences
from onecard.switch.clearing.positions import Reference
from onecard.switch.commands.clearing import reference

from checker import committed_journal
from conftest import start_switch
from termsim import NativeTerminal, socket_exchange

TOTALS = KIND_BY_NAME["MEDICAL_TOTALS"].value
DAY0 = dt.date(2000, 1, 1)


def yyyymmdd(date: dt.date) -> int:
    return date.year * 10000 + date.month * 100 + date.day


def engine_date(world) -> dt.date:
    return DAY0 + dt.timedelta(days=world.engine.authoriser.settle_day)


def switch_date() -> dt.date:
    now_us = np.array([time.time_ns() // 1000])
    day = clearing.settlement_days(now_us, clearing.cutover_minutes(clearing.CUTOVER_DEFAULT))
    return clearing.day_date(int(day[0]))


class Sums:
    """What an institution counts of the replies it got: approved settlements and refunds,
    the shares net of refunds."""

    def __init__(self) -> None:
        self.settlements = self.refunds = self.pool = self.personal = self.cash = 0

    def add(self, reply) -> None:
        assert reply.rc == "00", reply
        sign = -1 if isinstance(reply, native.MedicalRefundReply) else 1
        if sign < 0:
            self.refunds += 1
        else:
            self.settlements += 1
        self.pool += sign * reply.pool_fen
        self.personal += sign * reply.personal_fen
        self.cash += sign * reply.cash_fen

    def message(self, seq: int, date: dt.date, *, pool: int = 0,
                settlements: int = 0) -> native.MedicalTotals:
        """The totals as counted, or with the pool share and the settlements off by some."""
        p = self.pool + pool
        return native.MedicalTotals(seq, yyyymmdd(date), self.settlements + settlements,
                                    self.refunds, p + self.personal + self.cash, p,
                                    self.personal, self.cash)


def one(t: NativeTerminal, message):
    (r,) = t.send([message])
    return r


def terminal_at(world, place: str = "hospital", index: int = 0, exchange=None) -> NativeTerminal:
    tids = [tid for (tid,) in world.query(
        "SELECT t.tid FROM terminals t JOIN regions r ON r.idx = t.region_idx "
        "WHERE t.place = ? AND r.code = 310000 AND t.protocol = 1 ORDER BY t.idx", place)]
    info = next(t for t in world.terminals if t.tid == tids[index])
    t = NativeTerminal(info, exchange or world.exchange(1))
    assert t.signon().rc == "00"
    return t


def treat(t: NativeTerminal, sums: Sums, pans: list[str], refund_first: bool) -> None:
    """A bill for each card, then the first one refunded (when asked)."""
    bills = []
    for i, pan in enumerate(pans):
        bill = native.Medical(t.next_seq(), pan, 12_000 + 1_000 * i)
        sums.add(r := one(t, bill))
        bills.append((pan, bill.seq, r))
    if refund_first:
        pan, seq, _ = bills[0]
        sums.add(one(t, native.MedicalRefund(t.next_seq(), pan, seq)))


# ---- in the engine: the message, its checks, retransmissions -------------------------------


def journaled(world) -> int:
    return world.engine.journal.next_no


def test_valid_totals_are_journaled_as_sent_and_answered_received(world):
    doctor = terminal_at(world)
    date = engine_date(world)
    sums = Sums()
    treat(doctor, sums, [world.card(31)[0], world.card(31, nth=1)[0]], refund_first=True)
    before = journaled(world)
    sent = sums.message(doctor.next_seq(), date)
    reply = one(doctor, sent)
    assert isinstance(reply, native.MedicalTotalsReply)
    assert (reply.seq, reply.rc, reply.result) == (sent.seq, "00", 0)
    assert journaled(world) == before + 1
    _, data = world.engine.journal.take()
    recs = unpack(data)
    (t,) = view(recs[recs["kind"] == TOTALS], "medical_totals")
    assert (t["settle_day"], t["settlements"], t["refunds"], t["pool_fen"], t["personal_fen"],
            t["cash_fen"], t["terminal"], t["rc"]) == (
        clearing.day_number(date), 2, 1, sums.pool, sums.personal, sums.cash, doctor.info.idx,
        CODE_INDEX["00"])


def test_a_retransmission_gets_the_original_reply_and_another_message_94(world):
    doctor = terminal_at(world)
    sums = Sums()
    treat(doctor, sums, [world.card(31)[0]], refund_first=False)
    sent = sums.message(doctor.next_seq(), engine_date(world))
    first = one(doctor, sent)
    before = journaled(world)
    assert one(doctor, sent) == first and journaled(world) == before
    # same seq, one share moved to another: a different message, never recorded
    changed = native.MedicalTotals(sent.seq, sent.settle_date, sent.settlements, sent.refunds,
                                   sent.bill_fen, sent.pool_fen + 1, sent.personal_fen - 1,
                                   sent.cash_fen)
    assert one(doctor, changed).rc == "94" and journaled(world) == before


BAD_FIELDS = [
    ("a negative share without refunds", dict(pool_fen=-100, cash_fen=200), "below zero"),
    ("a bill that is not its shares", dict(bill_fen=999), "bill_fen must be"),
    ("no such date", dict(settle_date=20260230), "settle_date"),
    ("a date before 2000", dict(settle_date=19991231), "settle_date"),
    ("a negative count", dict(settlements=-1), "counts"),
    ("an amount too large", dict(cash_fen=1 << 47, bill_fen=(1 << 47) + 100), "2^47"),
]


@pytest.mark.parametrize(("case", "fields", "says"), BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_bad_totals_are_format_errors_and_journal_nothing(world, case, fields, says):
    doctor = terminal_at(world)
    good = dict(seq=doctor.next_seq(), settle_date=yyyymmdd(engine_date(world)),
                settlements=1, refunds=0, bill_fen=100, pool_fen=0, personal_fen=0,
                cash_fen=100)
    before = journaled(world)
    reply = one(doctor, native.MedicalTotals(**{**good, **fields}))
    assert isinstance(reply, native.ErrorReply), case
    assert (reply.seq, reply.rc) == (good["seq"], "30") and says in reply.message
    assert journaled(world) == before


def test_a_negative_net_share_is_accepted_with_refunds(world):
    """A day of refunds of earlier days' bills can leave a sum below zero."""
    doctor = terminal_at(world)
    sent = native.MedicalTotals(doctor.next_seq(), yyyymmdd(engine_date(world)), 0, 1,
                                -1_000, -600, -300, -100)
    assert one(doctor, sent).rc == "00"


def test_a_date_not_yet_reached_is_12_and_journals_nothing(world):
    doctor = terminal_at(world)
    before = journaled(world)
    tomorrow = engine_date(world) + dt.timedelta(days=1)
    reply = one(doctor, native.MedicalTotals(doctor.next_seq(), yyyymmdd(tomorrow), 0, 0,
                                             0, 0, 0, 0))
    assert isinstance(reply, native.MedicalTotalsReply) and (reply.rc, reply.result) == ("12", 0)
    assert journaled(world) == before
    assert one(doctor, native.MedicalTotals(doctor.next_seq(), yyyymmdd(engine_date(world)),
                                            0, 0, 0, 0, 0, 0)).rc == "00"


def test_only_medical_terminals_allowed_medical_may_send_totals(world):
    """Data sets store no MEDICAL_TOTALS permission: MEDICAL implies it, on a medical terminal
    only."""
    counter = world.native(TERM_VERIFIER)
    doctor = terminal_at(world)
    date = yyyymmdd(engine_date(world))
    before = journaled(world)
    assert one(counter, native.MedicalTotals(counter.next_seq(), date, 0, 0, 0, 0, 0, 0)
               ).rc == "58"
    idx = doctor.info.idx
    permitted = int(world.state.terminals["permitted"][idx])
    assert not permitted >> TOTALS & 1 and permitted >> KIND_MEDICAL & 1
    world.state.terminals["permitted"][idx] = permitted & ~(1 << KIND_MEDICAL)
    assert one(doctor, native.MedicalTotals(doctor.next_seq(), date, 0, 0, 0, 0, 0, 0)
               ).rc == "58"
    assert journaled(world) == before
    world.state.terminals["permitted"][idx] = permitted
    assert one(doctor, native.MedicalTotals(doctor.next_seq(), date, 0, 0, 0, 0, 0, 0)
               ).rc == "00"
    assert int(world.state.terminals["kind"][idx]) == TERM_MEDICAL


# ---- clearing's comparison, on records made here -------------------------------------------

NOON_US = int(dt.datetime(2026, 11, 30, 12, 0, tzinfo=clearing.CST).timestamp() * 1e6)
DAY = dt.date(2026, 11, 30)
REF = Reference(card_province=np.array([31]), card_region=np.array([310000]),
                terminal_acquirer=["HOSPITAL-1", "HOSPITAL-1", "PHARMACY-2"],
                app_codes=["MED-SETTLE"], programme_codes=[],
                terminal_tid=["M0000001", "M0000002", "M0000003"])


def bill(kind: str, terminal: int, cash: int, pool: int, personal: int,
         ts_us: int = NOON_US, rc: str = "00") -> np.ndarray:
    r = np.zeros(1, dtype=DTYPES["medical"])
    r["kind"], r["terminal"], r["card"], r["rc"] = KIND_BY_NAME[kind].value, terminal, 0, \
        CODE_INDEX[rc]
    r["ts_us"], r["amount_fen"], r["pool_fen"], r["personal_fen"] = ts_us, cash, pool, personal
    return r.view(RECORD_DTYPE)


def totals(terminal: int, settlements: int, refunds: int, pool: int, personal: int, cash: int,
           date: dt.date = DAY) -> np.ndarray:
    r = np.zeros(1, dtype=DTYPES["medical_totals"])
    r["kind"], r["terminal"], r["card"], r["account"] = TOTALS, terminal, NONE, NONE
    r["ts_us"], r["rc"] = NOON_US + 86_400_000_000, CODE_INDEX["00"]     # sent the next day
    r["settle_day"] = clearing.day_number(date)
    r["settlements"], r["refunds"] = settlements, refunds
    r["pool_fen"], r["personal_fen"], r["cash_fen"] = pool, personal, cash
    return r.view(RECORD_DTYPE)


def test_the_last_totals_of_a_date_are_compared_per_terminal():
    day = [bill("MEDICAL", 0, 300, 500, 200), bill("MEDICAL", 0, 100, 0, 0),
           bill("MEDICAL_REFUND", 0, 100, 0, 0), bill("MEDICAL", 0, 9, 9, 9, rc="51"),
           bill("MEDICAL", 1, 50, 50, 0), bill("MEDICAL", 2, 70, 0, 0),
           bill("MEDICAL", 0, 1, 1, 1, ts_us=NOON_US - 86_400_000_000)]    # the day before
    sent = [totals(0, 2, 1, 500, 200, 300), totals(1, 1, 0, 50, 0, 50),
            totals(1, 2, 0, 51, 0, 50),                                    # replaces the last
            totals(0, 9, 9, 9, 9, 9, date=DAY - dt.timedelta(days=1))]     # another date
    recs = np.concatenate(day + sent)
    nos = np.arange(100, 100 + len(recs))
    got = totals_differences(recs, nos, REF, DAY)
    assert got == [
        MedicalDifference("HOSPITAL-1", "M0000002", DAY, "pool", 50, 51, 109),
        MedicalDifference("HOSPITAL-1", "M0000002", DAY, "settlements", 1, 2, 109)]
    # the record numbers order the totals, not their place in the array
    swapped = nos.copy()
    swapped[[8, 9]] = swapped[[9, 8]]
    assert totals_differences(recs, swapped, REF, DAY) == []
    assert totals_differences(recs, nos, REF, DAY + dt.timedelta(days=1)) == []
    (before,) = totals_differences(recs, nos, REF, DAY - dt.timedelta(days=1))[:1]
    assert (before.terminal, before.fund, before.switch_value) == ("M0000001", "pool", 1)


# ---- over TCP, through a restart -----------------------------------------------------------


@pytest.mark.slow
def test_totals_over_tcp_are_compared_in_clearing_and_survive_a_restart(switch_dir, world,
                                                                         capsys):
    date = switch_date()
    sw = start_switch(switch_dir)
    sock = None
    try:
        sock, exchange = socket_exchange("127.0.0.1", sw.native, 4)
        h1, h2, pharmacy = (terminal_at(world, place, i, exchange) for place, i in
                            (("hospital", 0), ("hospital", 1), ("pharmacy", 0)))
        pans = [world.card(31, nth=i)[0] for i in range(4)]
        s1, s2, s3 = Sums(), Sums(), Sums()
        treat(h1, s1, pans[:3], refund_first=True)
        treat(h2, s2, pans[3:], refund_first=False)
        treat(pharmacy, s3, pans[:1], refund_first=False)         # sends no totals
        # h1 first sends wrong totals, then the right ones: the last replaces
        assert one(h1, s1.message(h1.next_seq(), date, pool=7)).rc == "00"
        matching = s1.message(h1.next_seq(), date)
        assert one(h1, matching) == native.MedicalTotalsReply(matching.seq, "00", 0)
        # h2 the other way round: right, then a wrong pool share and count
        assert one(h2, s2.message(h2.next_seq(), date)).rc == "00"
        wrong = s2.message(h2.next_seq(), date, pool=250, settlements=1)
        assert one(h2, wrong).rc == "00"
        # refused: nothing of these is journaled
        counter = terminal_at(world, "government counter", 0, exchange)
        refused = [one(counter, native.MedicalTotals(counter.next_seq(), yyyymmdd(date), 0, 0,
                                                     0, 0, 0, 0)).rc,
                   one(h1, native.MedicalTotals(h1.next_seq(), yyyymmdd(date), 1, 0, -5, -5,
                                                0, 0)).rc,
                   one(h1, native.MedicalTotals(h1.next_seq(), yyyymmdd(date + dt.timedelta(1)),
                                                0, 0, 0, 0, 0, 0)).rc]
        assert refused == ["58", "30", "12"]
    finally:
        if sock is not None:
            sock.close()
    if switch_date() != date:
        sw.stop()
        pytest.skip("the settlement date changed during the test (cut-over)")
    sw.kill9()                                   # no checkpoint: the restart replays
    sw = start_switch(switch_dir)
    try:
        sock, exchange = socket_exchange("127.0.0.1", sw.native, 4)
        h1.exchange = exchange
        assert one(h1, matching) == native.MedicalTotalsReply(matching.seq, "00", 0)
        changed = s1.message(matching.seq, date, pool=1)
        assert one(h1, changed).rc == "94"                          # the ring was replayed
        sock.close()
    finally:
        sw.stop()
    recs, nos, tids = committed_journal(switch_dir)
    sent = recs[recs["kind"] == TOTALS]
    assert [tids[int(t)] for t in sent["terminal"]] == [h1.info.tid] * 2 + [h2.info.tid] * 2
    ref, recs, nos = reference(switch_dir, date, date, clearing.CUTOVER_DEFAULT)
    got = totals_differences(recs, nos, ref, date)
    assert [(d.terminal, d.fund, d.switch_value, d.institution_value) for d in got] == [
        (h2.info.tid, "pool", s2.pool, s2.pool + 250),
        (h2.info.tid, "settlements", s2.settlements, s2.settlements + 1)]
    assert got[0].institution == ref.terminal_acquirer[h2.info.idx] and got[0].settle_date == date
    assert cli.main(["clearing", "medical", "--data-dir", str(switch_dir), "--date",
                     date.isoformat()]) == 0
    out = capsys.readouterr().out
    assert "daily totals that differ from the switch's (2)" in out
    assert h2.info.tid in out and h1.info.tid not in out.split("differ")[1]


def test_differences_are_exceptions_a_zero_fen_adjustment_acknowledges(world):
    """The admin API's exceptions include the totals' differences; the journal is what was
    settled, so an adjustment of 0 fen (no card, no issuer) acknowledges each and moves
    nothing in the date's positions."""
    import sqlite3

    from onecard.core import operations
    from onecard.switch.clearing import exceptions
    from onecard.switch.clearing.positions import positions
    from onecard.switch.clearing.reader import registry

    doctor = terminal_at(world)
    date = engine_date(world)
    sums = Sums()
    treat(doctor, sums, [world.card(31)[0]], refund_first=False)
    assert one(doctor, sums.message(doctor.next_seq(), date, pool=50)).rc == "00"
    conn = sqlite3.connect(world.data_dir / "onecard.db")
    ref = registry(conn, world.state.cards["pan"].copy(), world.state.cards["region"])
    conn.close()
    _, data = world.engine.journal.take()
    recs = unpack(data)
    got = exceptions.find(recs, np.arange(len(recs)), ref, date)
    assert [(e.kind, e.seq, e.terminal_amount_minor - e.switch_amount_minor) for e in got] == [
        ("MEDICAL_TOTALS", 0, 50)]                              # COMPARED[0]: the pool
    (e,) = got
    assert e.id == f"{date:%Y%m%d}-MEDICAL_TOTALS-{doctor.info.tid}-" \
        f"{clearing.day_number(date)}-0" and e.card_idx == -1
    with pytest.raises(ValueError, match="moves 0 fen"):
        operations.adjust(world.engine.authoriser, e.terminal_idx, e.seq, NONE, 50,
                          exception=clearing.EXCEPTION[e.kind], ref=e.ref, direction=1,
                          operator=1)
    before = positions(recs, np.arange(len(recs)), ref, date)
    operations.adjust(world.engine.authoriser, e.terminal_idx, e.seq, NONE, 0,
                      exception=clearing.EXCEPTION[e.kind], ref=e.ref, direction=1, operator=1)
    _, more = world.engine.journal.take()
    recs = np.concatenate([recs, unpack(more)])
    (done,) = exceptions.find(recs, np.arange(len(recs)), ref, date)
    assert done.status == "resolved" and done.adjustment.amount_fen == 0
    assert positions(recs, np.arange(len(recs)), ref, date) == before
