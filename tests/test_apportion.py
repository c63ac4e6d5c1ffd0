"""Transit apportionment of transfer journeys (issue 16, protocols/CLEARING.md "Transit
apportionment"): a journey's charged total split between its legs' operators in proportion
to the undiscounted fares, the remainder fen to the last leg, exact in integer fen.

Journeys go through the compiled engine (native frames, as the gates and readers send them);
the expected shares are computed here with exact fractions from the data set's own tables,
not with the clearing code's formula.
"""

import datetime as dt
import math
from fractions import Fraction

import numpy as np
import pytest

from onecard.core.state import TERM_BUS_READER
from onecard.protocols import clearing, native
from onecard.protocols.codes import CODE_INDEX
from onecard.protocols.journal import KIND_BY_NAME, NONE
from onecard.protocols.journal_codec import DTYPES, RECORD_DTYPE, unpack, view
from onecard.switch.clearing import apportion, files
from onecard.switch.clearing.positions import Reference, legs, positions, summarise
from onecard.switch.clearing.reader import registry
from onecard.switch.store import sqlite

from test_transit import (
    MIN,
    T0,
    YOUNG,
    Network,
    flat_fare,
    gate,
    offline,
    pin_clock,
    reader,
    region_policy,
    ride,
    tap,
)


def expected_shares(journey: list[tuple[int, int]]) -> tuple[int, int]:
    """(charged, discount) of two legs -> each leg's share, by the documented rule."""
    (c1, d1), (c2, d2) = journey
    total = c1 + c2
    first = math.floor(Fraction(total * (c1 + d1), c1 + d1 + c2 + d2))
    return first, total - first


def journal_of(world) -> tuple[np.ndarray, np.ndarray, Reference]:
    first, data = world.engine.journal.take()
    recs = unpack(data)
    conn = sqlite.connect(sqlite.db_path(world.data_dir), readonly=True)
    try:
        ref = registry(conn, world.state.cards["pan"], world.state.cards["region"])
    finally:
        conn.close()
    return recs, np.arange(first, first + len(recs)), ref


def the_date(recs: np.ndarray) -> dt.date:
    """The one settlement date of the records (the engine's clock is pinned to 10:30, far
    from the cut-over)."""
    (day,) = set(clearing.settlement_days(recs["ts_us"], 23 * 60).tolist())
    return clearing.day_date(day)


@pytest.fixture
def world(world):
    pin_clock(world, 0, 10)
    return world


def nets_of(recs, nos, ref) -> dict[str, int]:
    d = positions(recs, nos, ref, the_date(recs))
    nets = {p.party: p.net_fen for p in d.positions}
    assert sum(nets.values()) == 0
    return nets


def metro_then_bus(world, exit_station: str) -> tuple[int, int]:
    """A Shanghai metro ride from 莘庄, then a bus inside the transfer window: the two
    replies' fares."""
    net = Network(world, "SHMETRO")
    pan, _ = world.card(31, **YOUNG)
    metro = ride(gate(world, net, "1号线", "莘庄"), gate(world, net, "1号线", exit_station),
                 pan, T0, T0 + 20 * MIN)
    bus = tap(reader(world, TERM_BUS_READER, 310000), pan, when=T0 + 30 * MIN)
    assert (metro.rc, bus.rc) == ("00", "00")
    return metro.fare_fen, bus.fare_fen


def test_a_metro_then_bus_journey_pays_each_operator_its_proportional_share(world):
    discount = region_policy(world, 310000)["transfer_discount_fen"]
    bus_fare = flat_fare(world, "BUS310000")
    assert 0 < discount < bus_fare
    metro, bus = metro_then_bus(world, "锦江乐园")
    assert bus == bus_fare - discount
    recs, nos, ref = journal_of(world)
    tapped = recs[recs["kind"] == KIND_BY_NAME["TAP"].value]
    assert view(tapped, "tap")["transfer_discount_fen"].tolist() == [0, 0, discount]
    share_metro, share_bus = expected_shares([(metro, 0), (bus, discount)])
    assert share_metro < metro                   # the metro bears part of the discount
    assert nets_of(recs, nos, ref) == {"issuer:31": -(metro + bus),
                                       "acquirer:SHMETRO": share_metro,
                                       "acquirer:BUS310000": share_bus}


def test_the_remainder_fen_of_a_proportional_split_goes_to_the_last_leg(world):
    """Bus, then a metro ride one band longer: the proportional split is not whole fen."""
    discount = region_policy(world, 310000)["transfer_discount_fen"]
    net = Network(world, "SHMETRO")
    pan, _ = world.card(31, **YOUNG)
    bus = tap(reader(world, TERM_BUS_READER, 310000), pan, when=T0)
    metro = ride(gate(world, net, "1号线", "莘庄"), gate(world, net, "1号线", "漕宝路"), pan,
                 T0 + 10 * MIN, T0 + 30 * MIN)
    assert metro.fare_fen == net.fare("莘庄", "漕宝路") - discount
    journey = [(bus.fare_fen, 0), (metro.fare_fen, discount)]
    total, whole = bus.fare_fen + metro.fare_fen, bus.fare_fen + metro.fare_fen + discount
    assert total * bus.fare_fen % whole                  # a fraction of a fen to give out
    share_bus, share_metro = expected_shares(journey)
    assert Fraction(share_metro) > Fraction(total * (metro.fare_fen + discount), whole)
    recs, nos, ref = journal_of(world)
    assert nets_of(recs, nos, ref) == {"issuer:31": -total, "acquirer:BUS310000": share_bus,
                                       "acquirer:SHMETRO": share_metro}


def test_offline_uploads_are_apportioned_like_online_taps(world):
    """A metro trip and a bus ride recorded offline by the gates and uploaded later: the
    uploaded bus tap keeps its discount, and the journey is split the same way."""
    discount = region_policy(world, 310000)["transfer_discount_fen"]
    net = Network(world, "SHMETRO")
    entry, exit_ = gate(world, net, "1号线", "莘庄"), gate(world, net, "1号线", "漕宝路")
    bus = reader(world, TERM_BUS_READER, 310000)
    pan, _ = world.card(31, **YOUNG)
    (tin,) = entry.send([offline(entry, 1005, pan, native.TAP_IN, T0)])
    (tout,) = exit_.send([offline(exit_, 1007, pan, native.TAP_OUT, T0 + 20 * MIN)])
    (ride2,) = bus.send([offline(bus, 1009, pan, 0, T0 + 30 * MIN)])
    assert [r.rc for r in (tin, tout, ride2)] == ["00"] * 3
    assert ride2.fare_fen == flat_fare(world, "BUS310000") - discount
    recs, nos, ref = journal_of(world)
    uploaded = recs[recs["kind"] == KIND_BY_NAME["OFFLINE_TAP"].value]
    assert view(uploaded, "tap")["transfer_discount_fen"].tolist() == [0, 0, discount]
    share_metro, share_bus = expected_shares([(tout.fare_fen, 0), (ride2.fare_fen, discount)])
    assert nets_of(recs, nos, ref) == {"issuer:31": -(tout.fare_fen + ride2.fare_fen),
                                       "acquirer:SHMETRO": share_metro,
                                       "acquirer:BUS310000": share_bus}


def test_records_written_before_the_field_apportion_nothing(world):
    """A tap record of before the field reads 0: each operator keeps what its leg charged."""
    metro, bus = metro_then_bus(world, "锦江乐园")
    recs, nos, ref = journal_of(world)
    old = recs.copy()
    view(old, "tap")["transfer_discount_fen"] = np.where(
        np.isin(old["kind"], apportion.TAP_KINDS), 0, view(old, "tap")["transfer_discount_fen"])
    assert nets_of(old, nos, ref) == {"issuer:31": -(metro + bus), "acquirer:SHMETRO": metro,
                                      "acquirer:BUS310000": bus}


def test_the_clearing_files_show_the_apportionment_in_both_operators_files(world, tmp_path):
    metro, bus = metro_then_bus(world, "锦江乐园")
    recs, nos, ref = journal_of(world)
    date = the_date(recs)
    day = legs(recs, nos, ref, date)
    rendered = files.render(day, ref, date, "23:00")
    nets = {p.party: p.net_fen for p in summarise(day, date, "23:00").positions}
    taps = np.isin(recs["kind"], apportion.TAP_KINDS)
    discount = int(view(recs, "tap")["transfer_discount_fen"][taps].max())
    moved = metro - expected_shares([(metro, 0), (bus, discount)])[0]
    first_no, second_no = (str(n) for n in nos[(recs["amount_fen"] > 0)
                                                & (recs["kind"] == KIND_BY_NAME["TAP"].value)])
    for party, sign in (("acquirer:SHMETRO", -1), ("acquirer:BUS310000", +1)):
        lines = [line.split(",") for line in rendered[party].decode().splitlines()]
        (row,) = [r for r in lines if r[0] == "D" and r[4] == files.APPORTION]
        assert (row[1], row[-1]) == (second_no, first_no)       # the journey's two records
        assert (int(row[8]), int(row[10]), int(row[-2])) == (metro + bus + discount,
                                                            metro + bus, sign * moved)
    for path in files.write(rendered, tmp_path, date):
        f = files.read(path)
        assert f.net_fen == nets[f.party]


# ---- the rule on synthetic records -----------------------------------------------------------

DAY = dt.date(2026, 11, 30)
NOON_US = int(dt.datetime(2026, 11, 30, 12, 0, tzinfo=clearing.CST).timestamp() * 1e6)
REF = Reference(card_province=np.full(64, 31), card_region=np.full(64, 310000),
                terminal_acquirer=["SHMETRO", "BUS310000", "SHFERRY", "SHMETRO"],
                app_codes=["TRN-METRO"], programme_codes=[])


def leg(fare: int, discount: int = 0, *, terminal: int, card: int = 0, ts_us: int = NOON_US,
        rc: str = "00", kind: str = "TAP") -> np.ndarray:
    r = np.zeros(1, dtype=DTYPES["tap"])
    r["kind"], r["rc"], r["ts_us"] = KIND_BY_NAME[kind].value, CODE_INDEX[rc], ts_us
    r["card"], r["account"], r["terminal"] = card, card, terminal
    r["amount_fen"], r["transfer_discount_fen"] = fare, discount
    return r.view(RECORD_DTYPE)


def nets(*records, date: dt.date = DAY) -> dict[str, int]:
    recs = np.concatenate(records)
    d = positions(recs, np.arange(len(recs)), REF, date)
    out = {p.party: p.net_fen for p in d.positions}
    assert sum(out.values()) == 0
    return out


def test_a_chain_is_apportioned_pair_by_pair():
    """Metro 400, bus 200 - 100, ferry 200 - 100: the bus leg against the metro, the ferry
    against the bus (each discounted leg against the leg before it)."""
    s1 = expected_shares([(400, 0), (100, 100)])
    s2 = expected_shares([(100, 100), (100, 100)])
    assert nets(leg(400, terminal=0), leg(100, 100, terminal=1), leg(100, 100, terminal=2)) == {
        "issuer:31": -600, "acquirer:SHMETRO": s1[0],
        "acquirer:BUS310000": s1[1] - (100 - s2[0]), "acquirer:SHFERRY": s2[1]}


def test_the_first_leg_may_be_of_the_day_before_and_other_cards_do_not_count():
    """A first leg before the cut-over, the discounted one after it: the second date pays the
    apportionment. Another account's ride in between is not a leg of the journey; a declined
    tap and a metro tap-in (fare 0) are not either."""
    before = NOON_US + 10 * 3600 * 1_000_000 + 59 * 60 * 1_000_000       # 22:59, the 30th
    after = before + 2 * 60 * 1_000_000                                   # 23:01: the 1st
    tap_in = leg(0, terminal=3, ts_us=after)
    view(tap_in, "tap")["station_id"] = 31_001
    recs = [leg(400, terminal=0, ts_us=before), leg(200, terminal=2, card=1, ts_us=after),
            leg(200, terminal=2, ts_us=after, rc="51"), tap_in,
            leg(100, 100, terminal=1, ts_us=after)]
    share_metro, _ = expected_shares([(400, 0), (100, 100)])
    assert nets(*recs, date=DAY + dt.timedelta(days=1)) == {
        "issuer:31": -300, "acquirer:SHMETRO": -(400 - share_metro),
        "acquirer:BUS310000": 100 + (400 - share_metro), "acquirer:SHFERRY": 200}
    assert nets(*recs) == {"issuer:31": -400, "acquirer:SHMETRO": 400}


def test_a_free_ride_between_is_the_first_leg_and_moves_nothing():
    """A concession rider's free ferry between the metro and the discounted bus: the switch
    counted the window from the ferry, so the journey is ferry then bus: nothing to share."""
    assert nets(leg(400, terminal=0), leg(0, terminal=2), leg(100, 100, terminal=1)) == {
        "issuer:31": -500, "acquirer:SHMETRO": 400, "acquirer:BUS310000": 100}


def test_a_journey_within_one_operator_moves_nothing_between_operators():
    """Two metro gates of the same operator: no apportionment line, the same positions."""
    recs = np.concatenate([leg(400, terminal=0), leg(200, 100, terminal=3)])
    day = legs(recs, np.arange(2), REF, DAY)
    assert len(day.journeys.second) == 0 and day.plain == len(day.signed)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shares_of_random_fares_are_exact_integer_splits(seed):
    rng = np.random.default_rng(seed)
    n = 20_000
    c1, c2 = rng.integers(1, 2_000, n), rng.integers(0, 2_000, n)
    d1, d2 = rng.integers(0, 300, n) * (rng.random(n) < 0.3), rng.integers(1, 300, n)
    first, last = apportion.shares(c1, d1, c2, d2)
    assert first.dtype == last.dtype == np.int64
    assert np.array_equal(first + last, c1 + c2)                      # to the fen, always
    whole = c1 + d1 + c2 + d2
    # floor: first <= T * U1 / (U1 + U2) < first + 1, in integers (no float anywhere)
    exact = (c1 + c2) * (c1 + d1)
    assert np.all(first * whole <= exact) and np.all(exact < (first + 1) * whole)
    picks = rng.choice(n, 50, replace=False).tolist()
    assert [(int(first[i]), int(last[i])) for i in picks] == [
        expected_shares([(int(c1[i]), int(d1[i])), (int(c2[i]), int(d2[i]))]) for i in picks]
    # and through the clearing of a whole day of such journeys, a card each (a first leg
    # with a discount has no leg before it): each operator is paid the rule's shares
    recs = np.concatenate([np.concatenate([leg(int(c1[i]), int(d1[i]), terminal=0, card=k),
                                           leg(int(c2[i]), int(d2[i]), terminal=1, card=k)])
                           for k, i in enumerate(picks)])
    got = nets(recs)
    assert got["acquirer:SHMETRO"] == sum(int(first[i]) for i in picks)
    assert got["acquirer:BUS310000"] == sum(int(last[i]) for i in picks)
    assert got["issuer:31"] == -sum(int(c1[i] + c2[i]) for i in picks)


def test_unknown_terminal_of_a_first_leg_pays_from_suspense():
    """A first leg (of the day before) at a terminal the registry does not have: its
    operator's share of the journey is the suspense party's (issue 28), never a refused
    day; the day still nets to zero."""
    recs = np.concatenate([leg(400, terminal=0, ts_us=NOON_US - 86_400_000_000),
                           leg(100, 100, terminal=1)])
    recs["terminal"][0] = NONE
    got = {p.party: p.net_fen for p in positions(recs, np.arange(2), REF, DAY).positions}
    assert got == {"issuer:31": -100, "acquirer:BUS310000": 100 + 67,
                   clearing.SUSPENSE: -67}
