"""Exactly once for a whole business day (issue 27): a retransmission, a reversal and a void
reversal find their original after the terminal's 64-slot ring has moved on, for the
current and previous settlement dates ([core] idempotency_days); past that, a reversal is
refused (25), never acknowledged with no effect. In process through the compiled Engine,
then over TCP across a kill -9 of a real switch."""

import datetime as dt
import shutil

import numpy as np
import pytest
from test_payments import CST, DAY_US, funded_card, pin_clock

from onecard.core.horizon import Horizon

from conftest import start_switch
from test_server import iso_terminal

LATER = 1_000                      # requests between an original and its retransmission
BATCH = 100                        # requests a call: the engine takes a buffer at a time


@pytest.fixture(autouse=True)
def midday(world):
    """Decide at noon China time (no test straddles the cut-over), cards valid for years."""
    pin_clock(world, dt.datetime.combine(dt.datetime.now(CST).date(), dt.time(12), CST))
    world.state.cards["expiry_yymm"][:] = 9912


def busy(t, pan: str, count: int = LATER) -> None:
    """``count`` purchases of 1 fen on another card: the ring forgets everything before."""
    for start in range(0, count, BATCH):
        replies = t.send(*[t.purchase(pan, 1) for _ in range(min(BATCH, count - start))])
        assert {r["39"] for r in replies} == {"00"}


def test_retransmission_after_1000_requests_gets_the_original_answer(world):
    t = world.iso()
    pan, idx = funded_card(world)
    other, _ = funded_card(world, nth=1)
    s100 = t.next_stan()
    (first,) = t.send(t.purchase(pan, 777, stan=s100))
    assert first["39"] == "00"
    busy(t, other)
    charged = world.balance(idx)
    (again,) = t.send(t.purchase(pan, 777, stan=s100))
    assert (again["39"], again["37"], again["38"], again["11"]) == \
        ("00", first["37"], first["38"], s100)
    assert world.balance(idx) == charged                       # no second debit
    assert world.state.horizon.stats()["rows"] >= LATER - world.state.ring_size


def test_reversal_after_1000_requests_undoes_the_purchase(world):
    """The issue's case: 777 fen, then hundreds of purchases on another card, then 0400."""
    t = world.iso()
    pan, idx = funded_card(world)
    other, _ = funded_card(world, nth=1)
    before = world.balance(idx)
    s200 = t.next_stan()
    t.send(t.purchase(pan, 777, stan=s200))
    busy(t, other)
    (rev,) = t.send(t.reversal(pan, 777, s200))
    assert rev["39"] == "00"
    assert world.balance(idx) == before
    busy(t, other)
    (again,) = t.send(t.reversal(pan, 777, s200))
    # A repeated reversal: the first one's RRN and auth code, no second credit.
    assert (again["39"], again["37"], again["38"]) == ("00", rev["37"], rev["38"])
    assert world.balance(idx) == before


def test_reversal_with_other_details_than_the_forgotten_original_is_25(world):
    t = world.iso()
    pan, idx = funded_card(world)
    other, _ = funded_card(world, nth=1)
    s250 = t.next_stan()
    t.send(t.purchase(pan, 777, stan=s250))
    busy(t, other)
    charged = world.balance(idx)
    (rev,) = t.send(t.reversal(pan, 778, s250))
    assert rev["39"] == "25" and world.balance(idx) == charged


def test_void_reversal_after_1000_requests_charges_the_purchase_again(world):
    t = world.iso()
    pan, idx = funded_card(world)
    other, _ = funded_card(world, nth=1)
    before = world.balance(idx)
    s300 = t.next_stan()
    t.send(t.purchase(pan, 500, stan=s300))
    s301 = t.next_stan()
    (void,) = t.send(t.void(pan, 500, s300, stan=s301))
    assert void["39"] == "00" and world.balance(idx) == before
    busy(t, other)
    (rev,) = t.send(t.void_reversal(pan, 500, s301))
    assert rev["39"] == "00"
    assert world.balance(idx) == before - 500                  # the sale stands again
    s302 = t.next_stan()
    (void_again,) = t.send(t.void(pan, 500, s300, stan=s302))
    assert void_again["39"] == "00"                            # and can be voided again
    assert world.balance(idx) == before


def test_a_stan_used_again_on_a_later_date_is_a_new_request(world):
    """A POS whose counter restarted: the same STAN with another card or amount on a later
    date is decided, not refused as a changed retransmission."""
    t = world.iso()
    pan, idx = funded_card(world)
    other, _ = funded_card(world, nth=1)
    s400 = t.next_stan()
    t.send(t.purchase(pan, 300, stan=s400))
    busy(t, other, 100)
    world.engine.clock_offset_us += DAY_US
    assert t.signon()["39"] == "00"
    before = world.balance(idx)
    (p,) = t.send(t.purchase(pan, 301, stan=s400))
    assert p["39"] == "00" and world.balance(idx) == before - 301


def test_outside_the_horizon_a_reversal_is_refused_25(world):
    """Purchase on date D, traffic on D+1 and D+2: on D+2 the horizon (2 dates) no longer
    holds D, so the reversal cannot be matched, and is refused rather than acknowledged.
    D+1's purchase is still found and reversed."""
    t = world.iso()
    pan, idx = funded_card(world)
    other, _ = funded_card(world, nth=1)
    s500 = t.next_stan()
    t.send(t.purchase(pan, 600, stan=s500))
    busy(t, other, 100)
    world.engine.clock_offset_us += DAY_US
    assert t.signon()["39"] == "00"
    s600 = t.next_stan()
    t.send(t.purchase(pan, 400, stan=s600))
    busy(t, other, 100)
    world.engine.clock_offset_us += DAY_US
    assert t.signon()["39"] == "00"
    busy(t, other, 100)
    charged = world.balance(idx)
    (old,) = t.send(t.reversal(pan, 600, s500))
    assert old["39"] == "25" and world.balance(idx) == charged
    (recent,) = t.send(t.reversal(pan, 400, s600))
    assert recent["39"] == "00" and world.balance(idx) == charged + 400
    assert len(world.state.horizon.stats()["dates"]) == 2


def test_a_reversal_of_a_stan_never_seen_is_still_acknowledged(world):
    """Within the horizon an unknown original never reached the switch: 00, and the STAN
    is blocked for a late original (ISO8583.md), also after the ring moved on."""
    t = world.iso()
    pan, idx = funded_card(world)
    other, _ = funded_card(world, nth=1)
    before = world.balance(idx)
    s700 = t.next_stan()
    (rev,) = t.send(t.reversal(pan, 900, s700))
    assert rev["39"] == "00"
    busy(t, other, 200)
    (late,) = t.send(t.purchase(pan, 900, stan=s700))
    assert late["39"] == "94" and world.balance(idx) == before


def test_horizon_rows_survive_a_checkpoint(world):
    """State.snapshot() carries the horizon; a fresh one loaded from it finds the same."""
    t = world.iso()
    pan, _ = funded_card(world)
    busy(t, pan, 300)
    snap = world.state.snapshot()
    h = Horizon(2, 1 << 20, len(world.state.terminals))
    h.load(snap["horizon_rows"], snap["horizon_gens"], snap["horizon_dropped"])
    again = h.export()
    assert h.stats()["rows"] == world.state.horizon.stats()["rows"] > 0
    assert np.array_equal(again["horizon_rows"], snap["horizon_rows"])
    assert np.array_equal(again["horizon_gens"], snap["horizon_gens"])


def test_horizon_limits_and_dates():
    with pytest.raises(ValueError):
        Horizon(0, 100, 1)
    h = Horizon(2, 100, 4, 23 * 3600)
    cst_2300 = int(dt.datetime(2026, 12, 7, 23, 0, tzinfo=CST).timestamp() * 1e6)
    # From the cut-over on, the next settlement date.
    assert h.settlement_day(cst_2300) == h.settlement_day(cst_2300 - 1) + 1
    assert not h.forgotten(0, 5, 1_000_000)


@pytest.mark.slow
def test_retransmission_and_reversal_of_forgotten_requests_after_kill9(demo_dir, tmp_path,
                                                                       world):
    """Over TCP: 300 purchases after the original, kill -9, restart (checkpoint + replay):
    the retransmission gets its RRN, the reversal undoes it."""
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    pan, _ = world.card(nth=3)
    other, _ = world.card(nth=4)
    sw = start_switch(data)
    sock, t = iso_terminal(sw, world)
    s800 = t.next_stan()
    (first,) = t.send(t.purchase(pan, 4321, stan=s800))
    assert first["39"] == "00"
    for _ in range(3):
        replies = t.send(*[t.purchase(other, 1) for _ in range(BATCH)])
        assert {r["39"] for r in replies} == {"00"}
    sock.close()
    sw.kill9()
    sw = start_switch(data)
    try:
        sock, t = iso_terminal(sw, world)
        t.stan = 5000                  # the terminal's counter goes on after its requests
        (again,) = t.send(t.purchase(pan, 4321, stan=s800))
        assert (again["39"], again["37"], again["38"]) == ("00", first["37"], first["38"])
        (bal,) = t.send(t.balance(pan))
        charged = int(bal["54"][-12:])
        (rev,) = t.send(t.reversal(pan, 4321, s800))
        assert rev["39"] == "00"
        (bal,) = t.send(t.balance(pan))
        assert int(bal["54"][-12:]) == charged + 4321
        sock.close()
    finally:
        sw.stop()
