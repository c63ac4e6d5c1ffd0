"""Exactly once for a whole business day (issue 27): a retransmission, a reversal and a void
reversal find their original after the terminal's 64-slot ring has moved on, for the
current and previous settlement dates ([core] idempotency_days); past that, a reversal is
refused (25), never acknowledged with no effect. In process through the compiled Engine,
then over TCP across a kill -9 of a real switch."""

import datetime as dt
import re
import shutil
import time

import numpy as np
import pytest
from test_payments import CST, DAY_US, funded_card, pin_clock

from onecard.core.horizon import Horizon
from onecard.switch.store import snapshots
from onecard.switch.store.pg import checkpoints

from conftest import start_switch, store_config
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
    h.load([(snap["horizon_rows"], snap["horizon_rows_at"])], snap["horizon_gens"],
           snap["horizon_dropped"])
    again = h.export()
    assert h.stats()["rows"] == world.state.horizon.stats()["rows"] > 0
    assert np.array_equal(again["horizon_rows"], snap["horizon_rows"])
    assert np.array_equal(again["horizon_gens"], snap["horizon_gens"])


def _fill(h: Horizon, day: int, terminal: int, seqs: range) -> None:
    for seq in seqs:
        h.file_for_test(day, terminal, seq, seq * 10)


def test_segments_hold_only_what_changed_and_add_up_to_the_horizon():
    """A checkpoint's segment holds the rows filed or changed since the checkpoints
    confirmed; loading the chain of segments gives the horizon back exactly, also when a
    checkpoint failed (never confirmed) or a row a segment holds was changed later."""
    h = Horizon(2, 1 << 20, 4)
    _fill(h, 9000, 0, range(1, 1001))
    first = h.export(since_confirmed=True)
    assert len(first["horizon_rows"]) == 1000
    assert h.confirm(first["horizon_mark"])
    _fill(h, 9000, 1, range(1, 101))
    failed = h.export(since_confirmed=True)       # never written: not confirmed
    assert len(failed["horizon_rows"]) == 100
    h.file_for_test(9000, 0, 7, 777)             # a row the first segment holds, changed
    _fill(h, 9001, 2, range(1, 51))               # the next settlement date
    second = h.export(since_confirmed=True)
    assert len(second["horizon_rows"]) == 100 + 1 + 50
    assert second["horizon_rows_at"].tolist() == [[9000, 101], [9001, 50]]
    assert h.confirm(second["horizon_mark"])
    assert len(h.export(since_confirmed=True)["horizon_rows"]) == 0
    again = Horizon(2, 1 << 20, 4)
    again.load([(first["horizon_rows"], first["horizon_rows_at"]),
                (second["horizon_rows"], second["horizon_rows_at"])],
               second["horizon_gens"], second["horizon_dropped"])
    assert again.lookup_for_test(0, 7) == 777 and again.lookup_for_test(0, 8) == 80
    assert again.lookup_for_test(2, 50) == 500 and again.lookup_for_test(1, 100) == 1000
    assert np.array_equal(again.export()["horizon_rows"], h.export()["horizon_rows"])
    with pytest.raises(ValueError, match="segments"):   # a segment of the chain missing
        Horizon(2, 1 << 20, 4).load([(second["horizon_rows"], second["horizon_rows_at"])],
                                    second["horizon_gens"], second["horizon_dropped"])


def test_an_export_taken_before_a_change_is_not_taken_for_it():
    """A row changed after a checkpoint was taken and before it was confirmed goes into the
    next segment."""
    h = Horizon(2, 1 << 20, 4)
    _fill(h, 9000, 0, range(1, 11))
    taken = h.export(since_confirmed=True)
    h.file_for_test(9000, 0, 3, 333)
    assert h.confirm(taken["horizon_mark"])
    nxt = h.export(since_confirmed=True)
    assert nxt["horizon_rows"]["seq"].tolist() == [3]


def test_a_new_date_in_the_memory_of_the_one_it_drops_holds_nothing_of_it():
    """Two dates held: the third takes the first's memory; none of the first's requests is
    found there, the second's still are, and the first's numbers count as forgotten."""
    h = Horizon(2, 1 << 20, 4)
    _fill(h, 9000, 0, range(1, 2001))
    _fill(h, 9001, 1, range(1, 101))
    _fill(h, 9002, 2, range(1, 51))
    assert h.stats()["dates"] == [9002, 9001] and h.stats()["rows"] == 150
    assert h.lookup_for_test(0, 7) is None and h.lookup_for_test(1, 100) == 1000
    assert h.lookup_for_test(2, 50) == 500
    assert h.forgotten(0, 2000, 1 << 32) and not h.forgotten(0, 2001, 1 << 32)
    _fill(h, 9002, 0, range(2001, 2101))          # terminal 0 again, in reused pages
    assert h.lookup_for_test(0, 2100) == 21000 and h.lookup_for_test(0, 1999) is None


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


def _dsn(data) -> str | None:
    found = re.search(r'dsn = "([^"]+)"', store_config(data))
    return found.group(1) if found else None


def _checkpoints(data) -> list[int]:
    """The checkpoints held (files or PostgreSQL), oldest first."""
    dsn = _dsn(data)
    if dsn is None:
        return sorted(int(p.name.split("-")[1]) for p in snapshots.snapshot_root(data).glob(
            f"{snapshots.PREFIX}*") if (p / "manifest.json").exists())
    import psycopg  # only with the PostgreSQL store

    with psycopg.connect(dsn) as pg:
        return checkpoints.uptos(pg)


def _carried(data) -> bool:
    """Whether the newest checkpoint is built on segments of earlier ones."""
    dsn = _dsn(data)
    if dsn is None:
        return any("@" in name for name in snapshots.newest(data)[2])
    import psycopg

    with psycopg.connect(dsn) as pg:
        (n,) = pg.execute("SELECT count(*) FROM checkpoints WHERE name LIKE 'horizon\\_rows%' "
                          "AND upto < (SELECT max(upto) FROM checkpoints)").fetchone()
    return n > 0


def _next_checkpoint(data, after: int) -> int:
    """Wait for a checkpoint past journal record ``after``; its upto."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        held = _checkpoints(data)
        if held and held[-1] > after:
            return held[-1]
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint past {after} within 30 s")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_a_reversal_in_an_earlier_checkpoints_segment_survives_kill9(switch_dir, tmp_path,
                                                                     world):
    """Checkpoints write the horizon in segments (each the rows since the last): a purchase
    filed in one checkpoint's segment and reversed before the next, then two more
    checkpoints, then kill -9. After the restart the repeated reversal is answered as the
    first was and undoes nothing again; the newest checkpoint carries the older segments."""
    data = switch_dir
    cfg = tmp_path / "segments.toml"
    cfg.write_text("[server]\nlatency_budget_ms = 0\n" + (store_config(data) or "[store]\n")
                   + "checkpoint_records = 50\ncheckpoint_interval_s = 1\n")
    pan, _ = world.card(nth=5)
    other, _ = world.card(nth=6)
    sw = start_switch(data, "--config", str(cfg))
    try:
        sock, t = iso_terminal(sw, world)
        (bal,) = t.send(t.balance(pan))
        before = int(bal["54"][-12:])
        s900 = t.next_stan()
        assert t.send(t.purchase(pan, 2345, stan=s900))[0]["39"] == "00"
        busy(t, other, 200)                      # the purchase leaves the ring
        seen = _next_checkpoint(data, (_checkpoints(data) or [0])[-1])
        (rev,) = t.send(t.reversal(pan, 2345, s900))
        assert rev["39"] == "00"
        for _ in range(2):                       # two more checkpoints after the reversal
            busy(t, other, 200)
            seen = _next_checkpoint(data, seen)
        busy(t, other, 100)
        sock.close()
    finally:
        sw.kill9()
    assert _carried(data)
    sw = start_switch(data, "--config", str(cfg))
    try:
        sock, t = iso_terminal(sw, world)
        t.stan = 9000
        (again,) = t.send(t.reversal(pan, 2345, s900))
        assert (again["39"], again["37"], again["38"]) == ("00", rev["37"], rev["38"])
        (bal,) = t.send(t.balance(pan))
        assert int(bal["54"][-12:]) == before
        sock.close()
    finally:
        sw.stop()
