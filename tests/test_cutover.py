"""The business day's cut-over (日切, issue 16) at the terminals: replies that carry a date
(0810, 0210, 0510) give the settlement date in field 15, and after the cut-over a POS still on
the previous date's session is told to sign on again (77) for new transactions, while its
retransmissions get their original answers, and it may still settle and reverse."""

import datetime as dt
import time

from onecard.core.ledger import apply_records
from onecard.protocols import clearing
from onecard.switch.store import loader

CST = clearing.CST
DAY = dt.date(2031, 5, 20)


def at(world, hour: int, minute: int = 0, day: dt.date = DAY) -> None:
    """Decide at this China time from now on."""
    when = dt.datetime.combine(day, dt.time(hour, minute), CST)
    world.engine.clock_offset_us = int(when.timestamp() * 1e6) - time.time_ns() // 1000


def funded(world) -> str:
    pan, idx = world.card(31)
    world.state.cards["expiry_yymm"][idx] = 9912
    return pan


def test_dated_replies_carry_the_settlement_date(world):
    at(world, 12)
    t = world.iso()                          # signs on at noon: field 15 of its 0810
    pan = funded(world)
    (p,) = t.send(t.purchase(pan, 100))
    (s,) = t.send(t.settlement(100, 1, 0, 0))
    assert (p["39"], p["15"], p["13"], s["15"]) == ("00", "0520", "0520", "0520")
    assert t.signon()["15"] == "0520"
    at(world, 23, 5)                         # past the cut-over: the 21st's, still the 20th
    reply = t.signon()
    assert (reply["15"], reply["13"]) == ("0521", "0520")
    (r,) = t.send(t.reversal(pan, 100, p["11"]))
    assert r["39"] == "00" and "15" not in r                  # 0410 carries no date


def test_after_the_cutover_a_stale_session_must_sign_on_again(world, demo_dir):
    at(world, 22, 30)
    t = world.iso()
    pan = funded(world)
    (first,) = t.send(t.purchase(pan, 1_000))
    assert first["39"] == "00" and first["15"] == "0520"
    at(world, 23, 10)
    (new,) = t.send(t.purchase(pan, 2_000))
    assert new["39"] == "77"                                  # settle and sign on again
    (again,) = t.send(t.purchase(pan, 1_000, stan=first["11"]))
    assert (again["39"], again["37"]) == ("00", first["37"])   # the original answer
    (rev,) = t.send(t.reversal(pan, 1_000, first["11"]))
    assert rev["39"] == "00"                                  # a reversal still goes through
    (settled,) = t.send(t.settlement(0, 0, 0, 0))
    assert settled["39"] == "00" and settled["15"] == "0521"
    signon = t.signon()
    assert signon["39"] == "00" and signon["15"] == "0521"
    (after,) = t.send(t.purchase(pan, 2_000))
    assert after["39"] == "00" and after["15"] == "0521"
    # the session's date is journaled with the sign-on: replay gives it back
    idx = t.info.idx
    day = clearing.day_number(dt.date(2031, 5, 21))
    assert world.state.terminals["session_day"][idx] == day
    first_no, data = world.engine.journal.take()
    fresh = loader.load(world.data_dir)
    apply_records(fresh.state, data, first_no)
    assert fresh.state.terminals["session_day"][idx] == day


def test_the_cutover_is_configurable(world):
    world.engine.authoriser.cutover_s = 0                     # midnight: calendar dates
    at(world, 23, 30)
    t = world.iso()
    assert t.signon()["15"] == "0520"
    (p,) = t.send(t.purchase(funded(world), 100))
    assert (p["39"], p["15"]) == ("00", "0520")
