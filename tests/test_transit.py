"""Transit through the compiled engine (real native frames, msgspec on the terminal side) and
once over TCP: metro distance bands, flat bus and ferry fares, transfers, concessions, missing
taps, offline uploads, the deny list and its delta sync, region acceptance, HMT residents.

Expected fares are derived here from the data set's own tables (stations with their km
positions, the operators' fare rules, the regions' policy columns), not copied from the switch.
"""

import datetime as dt
import heapq
import itertools
import json
import math
import time

import msgspec
import numpy as np
import pytest

from onecard.core import crypto, operations
from onecard.core.engine import NATIVE
from onecard.core.state import (
    HOLDER_DISABLED,
    HOLDER_HMT,
    TERM_BUS_READER,
    TERM_FERRY_READER,
    TERM_KIOSK,
    TERM_METRO_GATE,
)
from onecard.protocols import native

from conftest import ON_BOTH_STORES, start_switch
from termsim import NativeTerminal, socket_exchange

CST = dt.timezone(dt.timedelta(hours=8))
T0 = int(dt.datetime(2025, 6, 2, 8, 0, tzinfo=CST).timestamp())    # a Monday morning ride
MIN = 60
# born after 1982, no holder flags: no concession anywhere
YOUNG = {"birth_day": lambda b: b > 30000, "flags": lambda f: f == 0}


# ---- the data set's tables ----------------------------------------------------------------


def region_policy(world, code: int) -> dict:
    (row,) = world.query("SELECT elderly_age, elderly_pct, disabled_pct, transfer_minutes, "
                         "transfer_discount_fen FROM regions WHERE code = ?", code)
    return dict(zip(("elderly_age", "elderly_pct", "disabled_pct", "transfer_minutes",
                     "transfer_discount_fen"), row, strict=True))


def flat_fare(world, operator_code: str) -> int:
    (row,) = world.query("SELECT flat_fare_fen FROM operators WHERE code = ?", operator_code)
    return row[0]


def band_fare(rule: dict, km: float) -> int:
    """The published bands: base fare up to base_km, then per tier one step_fen more for each
    started step_km."""
    fare, lower = rule["base_fen"], rule["base_km"]
    for upto, step_km, step_fen in rule["tiers"]:
        if km <= lower:
            break
        fare += math.ceil(round((min(km, upto) - lower) / step_km, 6)) * step_fen
        lower = upto
    return fare


class Network:
    """A metro operator's stations (km along each line) and fare rule from the store."""

    def __init__(self, world, code: str) -> None:
        ((rule,),) = world.query("SELECT fare_rule FROM operators WHERE code = ?", code)
        self.rule = json.loads(rule)
        rows = world.query("SELECT s.id, s.line, s.name, s.km FROM stations s JOIN operators o "
                           "ON o.idx = s.operator_idx WHERE o.code = ?", code)
        self.ids = {(line, name): sid for sid, line, name, _ in rows}
        self.edges: dict[str, list[tuple[float, str]]] = {}
        for line in {r[1] for r in rows}:
            stops = sorted((km, name) for _, ln, name, km in rows if ln == line)
            for (k1, a), (k2, b) in itertools.pairwise(stops):
                self.edges.setdefault(a, []).append((k2 - k1, b))
                self.edges.setdefault(b, []).append((k2 - k1, a))

    def km(self, a: str, b: str) -> float:
        """Shortest network distance (Dijkstra over the lines; interchanges share a name)."""
        best, todo = {a: 0.0}, [(0.0, a)]
        while todo:
            d, here = heapq.heappop(todo)
            if here == b:
                return round(d, 1)
            for w, there in self.edges[here]:
                if d + w < best.get(there, math.inf):
                    best[there] = d + w
                    heapq.heappush(todo, (d + w, there))
        raise AssertionError(f"{b} not reachable from {a}")

    def fare(self, a: str, b: str) -> int:
        return band_fare(self.rule, self.km(a, b))

    def max_fare(self) -> int:
        return max(self.fare(a, b) for a, b in itertools.combinations(self.edges, 2))


# ---- terminals and cards ------------------------------------------------------------------


def signed_on(world, info) -> NativeTerminal:
    t = NativeTerminal(info, world.exchange(NATIVE))
    assert t.signon().rc == "00"
    return t


def gate(world, net: Network, line: str, name: str) -> NativeTerminal:
    sid = net.ids[(line, name)]
    return signed_on(world, next(t for t in world.terminals
                                 if t.kind == TERM_METRO_GATE and t.station_id == sid))


def reader(world, kind: int, region_code: int, index: int = 0) -> NativeTerminal:
    found = [t for t in world.terminals if t.kind == kind and t.region_code == region_code]
    return signed_on(world, found[index])


def tap(t: NativeTerminal, pan: str, direction: int = native.TAP_IN, when: int = 0):
    (r,) = t.send([native.Tap(t.next_seq(), pan, t.info.station_id or 0, direction, when)])
    assert isinstance(r, native.TapReply)
    return r


def ride(entry: NativeTerminal, exit_: NativeTerminal, pan: str, t_in: int = 0,
         t_out: int = 0) -> native.TapReply:
    tin = tap(entry, pan, native.TAP_IN, t_in)
    assert (tin.rc, tin.fare_fen) == ("00", 0)
    return tap(exit_, pan, native.TAP_OUT, t_out)


def pin_clock(world, weekday: int, hour: int) -> dt.date:
    """Set the engine's clock to hour:30 China time on the latest such weekday (0 = Monday)
    up to today; returns that date."""
    today = dt.datetime.now(CST).date()
    day = today - dt.timedelta(days=(today.weekday() - weekday) % 7)
    when = dt.datetime(day.year, day.month, day.day, hour, 30, tzinfo=CST)
    world.engine.clock_offset_us = int(when.timestamp() * 1_000_000) - time.time_ns() // 1000
    return day


def set_age(world, idx: int, years: int, on: dt.date, *, days_short: int = 0) -> None:
    """Make the holder exactly ``years`` old on ``on`` (or that many days short of it)."""
    born = on.replace(year=on.year - years) + dt.timedelta(days=days_short)
    world.state.accounts["birth_day"][world.state.cards["account"][idx]] = (
        born - dt.date(1900, 1, 1)).days


def set_flags(world, idx: int, flags: int) -> None:
    world.state.accounts["flags"][world.state.cards["account"][idx]] = flags


# ---- metro fares --------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "entry", "exit_"), [
    ("SHMETRO", ("1号线", "莘庄"), ("1号线", "锦江乐园")),         # inside the base distance
    ("SHMETRO", ("1号线", "莘庄"), ("1号线", "漕宝路")),           # one started band
    ("SHMETRO", ("17号线", "东方绿舟"), ("2号线", "陆家嘴")),       # via 虹桥火车站
    ("BJSUBWAY", ("1号线", "苹果园"), ("1号线", "四惠")),           # four tiers of bands
    ("BJSUBWAY", ("1号线", "苹果园"), ("2号线", "积水潭")),         # 建国门 beats 复兴门
    ("GZMETRO", ("1号线", "西塱"), ("3号线", "珠江新城")),          # via 体育西路
])
def test_metro_fare_is_the_band_fare_of_the_shortest_distance(world, code, entry, exit_):
    net = Network(world, code)
    province = {"SHMETRO": 31, "BJSUBWAY": 11, "GZMETRO": 44}[code]
    pan, idx = world.card(province, **YOUNG)
    before = world.balance(idx)
    expected = net.fare(entry[1], exit_[1])
    r = ride(gate(world, net, *entry), gate(world, net, *exit_), pan)
    assert r.rc == "00" and r.fare_fen == expected
    assert r.balance_fen == before - expected == world.balance(idx)


def test_bus_and_ferry_charge_the_operators_flat_fare(world):
    cases = [(TERM_BUS_READER, 310000, 31, "BUS310000"), (TERM_BUS_READER, 110000, 11,
                                                           "BUS110000"),
             (TERM_FERRY_READER, 310000, 31, "SHFERRY"), (TERM_FERRY_READER, 440100, 44,
                                                           "GZFERRY")]
    assert flat_fare(world, "BUS110000") != flat_fare(world, "BUS310000")  # per operator
    for n, (kind, region, province, operator) in enumerate(cases):
        pan, idx = world.card(province, nth=n, **YOUNG)          # a first ride: no transfer
        before = world.balance(idx)
        r = tap(reader(world, kind, region), pan, when=T0)
        assert r.rc == "00" and r.fare_fen == flat_fare(world, operator) > 0, operator
        assert world.balance(idx) == before - r.fare_fen



def test_an_online_bus_tap_without_the_fare_is_refused_and_changes_nothing(world):
    """Online taps need the money on buses too (only an offline upload may overdraw)."""
    pan, idx = world.card(31, **YOUNG)
    fare = flat_fare(world, "BUS310000")
    world.set_balance(idx, fare - 1)
    bus = reader(world, TERM_BUS_READER, 310000)
    r = tap(bus, pan, when=T0)
    assert (r.rc, r.fare_fen, world.balance(idx)) == ("51", 0, fare - 1)
    world.set_balance(idx, fare)
    assert tap(bus, pan, when=T0 + 60).rc == "00" and world.balance(idx) == 0

# ---- transfers ----------------------------------------------------------------------------


def test_transfer_discount_within_the_window_and_none_outside(world):
    policy = region_policy(world, 310000)
    window, discount = policy["transfer_minutes"] * MIN, policy["transfer_discount_fen"]
    assert window and discount
    fare = flat_fare(world, "BUS310000")
    bus = reader(world, TERM_BUS_READER, 310000)
    inside, _ = world.card(31, **YOUNG)
    outside, _ = world.card(31, nth=1, **YOUNG)
    assert tap(bus, inside, when=T0).fare_fen == fare
    assert tap(bus, inside, when=T0 + window - MIN).fare_fen == fare - discount
    assert tap(bus, outside, when=T0).fare_fen == fare
    assert tap(bus, outside, when=T0 + window + MIN).fare_fen == fare


def test_bus_then_short_metro_ride_gets_the_transfer_discount(world):
    policy = region_policy(world, 310000)
    net = Network(world, "SHMETRO")
    pan, _ = world.card(31, **YOUNG)
    tap(reader(world, TERM_BUS_READER, 310000), pan, when=T0)
    r = ride(gate(world, net, "1号线", "莘庄"), gate(world, net, "1号线", "漕宝路"), pan,
             T0 + 10 * MIN, T0 + 30 * MIN)
    assert r.fare_fen == net.fare("莘庄", "漕宝路") - policy["transfer_discount_fen"]


def test_transfer_window_counts_to_when_the_next_ride_starts(world):
    """A metro ride entered inside the window is a transfer even if it ends after it."""
    policy = region_policy(world, 310000)
    window = policy["transfer_minutes"] * MIN
    net = Network(world, "SHMETRO")
    pan, _ = world.card(31, **YOUNG)
    tap(reader(world, TERM_BUS_READER, 310000), pan, when=T0)
    r = ride(gate(world, net, "1号线", "莘庄"), gate(world, net, "1号线", "漕宝路"), pan,
             T0 + window - 20 * MIN, T0 + window + 20 * MIN)
    assert r.fare_fen == net.fare("莘庄", "漕宝路") - policy["transfer_discount_fen"]


def test_no_transfer_discount_where_the_city_has_none(world):
    assert region_policy(world, 320500)["transfer_minutes"] == 0
    bus = reader(world, TERM_BUS_READER, 320500)
    pan, _ = world.card(32, **YOUNG)
    fares = [tap(bus, pan, when=T0 + i * 5 * MIN).fare_fen for i in range(2)]
    assert fares == [flat_fare(world, "BUS320500")] * 2


# ---- concessions --------------------------------------------------------------------------


def test_elderly_concession_follows_the_city_table_from_the_threshold_age(world):
    today = pin_clock(world, 2, 10)
    wuhu, shanghai = region_policy(world, 340200), region_policy(world, 310000)
    assert wuhu["elderly_age"] < shanghai["elderly_age"] and 0 < wuhu["elderly_pct"] < 100
    wuhu_bus = reader(world, TERM_BUS_READER, 340200)
    sh_bus = reader(world, TERM_BUS_READER, 310000)
    fare = flat_fare(world, "BUS340200")
    cards = [world.card(31, nth=i, **YOUNG) for i in range(4)]
    for (_, idx), years, short in zip(cards, (wuhu["elderly_age"], wuhu["elderly_age"],
                                              shanghai["elderly_age"], shanghai["elderly_age"]),
                                      (0, 1, 0, 1), strict=True):
        set_age(world, idx, years, today, days_short=short)
    (at_wuhu_age, _), (day_short, _), (at_sh_age, _), (sh_short, _) = cards
    assert tap(wuhu_bus, at_wuhu_age, when=T0).fare_fen == fare * wuhu["elderly_pct"] // 100
    assert tap(wuhu_bus, day_short, when=T0).fare_fen == fare
    # the same holder is charged by the policy of the city where the ride is
    assert tap(sh_bus, at_wuhu_age, when=T0 + 1000 * MIN).fare_fen == flat_fare(
        world, "BUS310000")
    sh_fare = flat_fare(world, "BUS310000") * shanghai["elderly_pct"] // 100
    assert tap(sh_bus, at_sh_age, when=T0).fare_fen == sh_fare
    assert tap(sh_bus, sh_short, when=T0).fare_fen == flat_fare(world, "BUS310000")


def test_disabled_holders_pay_the_disabled_percentage_on_bus_and_metro(world):
    policy = region_policy(world, 310000)
    net = Network(world, "SHMETRO")
    pan, idx = world.card(31, **YOUNG)
    set_flags(world, idx, HOLDER_DISABLED)
    before = world.balance(idx)
    bus = tap(reader(world, TERM_BUS_READER, 310000), pan, when=T0)
    trip = ride(gate(world, net, "1号线", "莘庄"), gate(world, net, "2号线", "陆家嘴"), pan,
                T0 + 1000 * MIN, T0 + 1060 * MIN)
    assert bus.fare_fen == flat_fare(world, "BUS310000") * policy["disabled_pct"] // 100
    assert trip.fare_fen == net.fare("莘庄", "陆家嘴") * policy["disabled_pct"] // 100
    assert world.balance(idx) == before - bus.fare_fen - trip.fare_fen


# ---- missing taps -------------------------------------------------------------------------


def test_missing_tap_out_costs_the_maximum_fare_at_the_next_tap_in(world):
    net = Network(world, "SHMETRO")
    pan, idx = world.card(31, **YOUNG)
    before = world.balance(idx)
    first = gate(world, net, "1号线", "莘庄")
    second = gate(world, net, "2号线", "静安寺")
    assert tap(first, pan, native.TAP_IN, T0).fare_fen == 0
    again = tap(second, pan, native.TAP_IN, T0 + 600 * MIN)         # never tapped out
    assert again.rc == "00" and again.fare_fen == net.max_fare()
    out = tap(gate(world, net, "2号线", "陆家嘴"), pan, native.TAP_OUT, T0 + 630 * MIN)
    assert out.fare_fen == net.fare("静安寺", "陆家嘴")                  # the new trip stands
    assert world.balance(idx) == before - net.max_fare() - out.fare_fen


def test_tap_out_without_tap_in_costs_the_maximum_fare(world):
    net = Network(world, "BJSUBWAY")
    pan, _ = world.card(11, **YOUNG)
    r = tap(gate(world, net, "2号线", "前门"), pan, native.TAP_OUT, T0)
    assert r.rc == "00" and r.fare_fen == net.max_fare()


# ---- offline uploads and the deny list ----------------------------------------------------


def offline(t: NativeTerminal, seq: int, pan: str, direction: int, when: int):
    return native.OfflineTap(seq, pan, t.info.station_id or 0, direction, when)


def test_offline_upload_is_applied_once_per_terminal_and_sequence(world):
    bus = reader(world, TERM_BUS_READER, 310000)
    other = reader(world, TERM_BUS_READER, 310000, index=1)
    fare = flat_fare(world, "BUS310000")
    cards = [world.card(31, nth=i, **YOUNG) for i in range(5)]
    before = [world.balance(i) for _, i in cards]
    batch = [offline(bus, 1010 + k, pan, 0, T0 + k * 1000 * MIN)
             for k, (pan, _) in enumerate(cards[:3])]
    replies = bus.send(batch)
    assert [(r.seq, r.rc, r.fare_fen) for r in replies] == [(1010 + k, "00", fare)
                                                            for k in range(3)]
    assert all(isinstance(r, native.OfflineTapReply) for r in replies)
    assert [r.rc for r in bus.send(batch)] == ["94"] * 3               # the same upload again
    overlap = batch[1:] + [offline(bus, 1013 + k, pan, 0, T0 + (3 + k) * 1000 * MIN)
                           for k, (pan, _) in enumerate(cards[3:])]
    assert [r.rc for r in bus.send(overlap)] == ["94", "94", "00", "00"]
    assert [world.balance(i) for _, i in cards] == [b - fare for b in before]
    (elsewhere,) = other.send([offline(other, 1010, cards[0][0], 0, T0 + 9000 * MIN)])
    assert elsewhere.rc == "00"                                        # another terminal's 1010
    assert world.balance(cards[0][1]) == before[0] - 2 * fare


def test_offline_metro_trip_is_priced_like_an_online_one(world):
    net = Network(world, "SHMETRO")
    entry, exit_ = gate(world, net, "1号线", "莘庄"), gate(world, net, "2号线", "南京西路")
    pan, idx = world.card(31, **YOUNG)
    before = world.balance(idx)
    (tin,) = entry.send([offline(entry, 1005, pan, native.TAP_IN, T0)])
    (tout,) = exit_.send([offline(exit_, 1007, pan, native.TAP_OUT, T0 + 40 * MIN)])
    assert (tin.rc, tout.rc) == ("00", "00")
    assert tout.fare_fen == net.fare("莘庄", "南京西路")
    assert world.balance(idx) == before - tout.fare_fen == tout.balance_fen


def sync(t: NativeTerminal, since: int) -> native.DenyListReply:
    (r,) = t.send([native.DenyListSync(t.next_seq(), since)])
    assert isinstance(r, native.DenyListReply) and r.rc == "00"
    return r


def test_negative_offline_balance_denies_online_taps_until_topped_up(world):
    net = Network(world, "SHMETRO")
    entry, exit_ = gate(world, net, "1号线", "莘庄"), gate(world, net, "2号线", "陆家嘴")
    bus = reader(world, TERM_BUS_READER, 310000)
    pan, idx = world.card(31, **YOUNG)
    fare = net.fare("莘庄", "陆家嘴")
    world.set_balance(idx, fare - 200)
    start = sync(bus, 0).version
    entry.send([offline(entry, 1001, pan, native.TAP_IN, T0)])
    (out,) = exit_.send([offline(exit_, 1001, pan, native.TAP_OUT, T0 + 50 * MIN)])
    assert out.rc == "00" and out.fare_fen == fare and world.balance(idx) == -200
    listed = sync(bus, start)
    assert (listed.version, listed.added, listed.removed) == (start + 1, [pan], [])
    again = sync(bus, listed.version)                                  # nothing new
    assert (again.version, again.added, again.removed) == (listed.version, [], [])
    refused = tap(bus, pan, when=T0 + 2000 * MIN)
    assert refused.rc == "05" and refused.fare_fen == 0 and world.balance(idx) == -200
    assert tap(entry, pan, native.TAP_IN, T0 + 2001 * MIN).rc == "05"
    (late,) = bus.send([offline(bus, 1001, pan, 0, T0 + 500 * MIN)])     # offline: never refused
    assert late.rc == "00" and world.balance(idx) == -200 - flat_fare(world, "BUS310000")
    assert sync(bus, listed.version).added == []                       # listed once
    assert operations.credit(world.engine.authoriser, int(pan), 100)[0] == "00"
    assert tap(bus, pan, when=T0 + 2002 * MIN).rc == "05"              # still below zero
    owed = -world.balance(idx)
    assert operations.credit(world.engine.authoriser, int(pan), owed + 1000)[0] == "00"
    ok = tap(bus, pan, when=T0 + 2003 * MIN)
    assert ok.rc == "00" and world.balance(idx) == 1000 - ok.fare_fen
    cleared = sync(bus, listed.version)
    assert (cleared.version, cleared.added, cleared.removed) == (listed.version + 1, [], [pan])


def kiosk(world, region_code: int = 310000) -> NativeTerminal:
    return reader(world, TERM_KIOSK, region_code)


def top_up(t: NativeTerminal, pan: str, amount_fen: int, seq: int | None = None):
    (r,) = t.send([native.TopUp(seq or t.next_seq(), pan, amount_fen)])
    return r


def test_kiosk_top_up_credits_once_and_takes_the_card_off_the_deny_list(world):
    k, bus = kiosk(world), reader(world, TERM_BUS_READER, 310000)
    pan, idx = world.card(31, **YOUNG)
    world.set_balance(idx, 0)
    start = sync(bus, 0).version
    bus.send([offline(bus, 1001, pan, 0, T0)])                         # below zero: listed
    owed = -world.balance(idx)
    assert owed > 0 and tap(bus, pan, when=T0 + 100 * MIN).rc == "05"
    seq = k.next_seq()
    paid = top_up(k, pan, owed + 5_000, seq)
    assert isinstance(paid, native.TopUpReply)
    assert (paid.rc, paid.amount_fen, paid.balance_fen) == ("00", owed + 5_000, 5_000)
    again = top_up(k, pan, owed + 5_000, seq)                          # a retransmission
    assert again == paid and world.balance(idx) == 5_000               # credited once
    assert top_up(k, pan, 1, seq).rc == "94"                           # same seq, other amount
    assert tap(bus, pan, when=T0 + 200 * MIN).rc == "00"
    cleared = sync(bus, start)
    assert (cleared.added, cleared.removed) == ([], [pan])             # net: off the list


def test_kiosk_top_up_refusals(world):
    k = kiosk(world)
    pan, idx = world.card(31, **YOUNG)
    before = world.balance(idx)
    assert top_up(k, pan, 100_001).rc == "13"                          # over topup_fen_max
    body = msgspec.msgpack.encode([[10, k.next_seq(), pan, 0]])        # a zero amount
    (frame,) = k.send_raw(native.encode_frame(k.info.tid, body, crypto.mac(k.alg, k.mak, body)))
    (bad,) = native.decode_replies(frame.body)
    assert bad.rc == "30" and "amount_fen" in bad.message
    outsider, _ = world.card(44)
    assert top_up(k, outsider, 1_000).rc == "62"                       # not in the YRD group
    lost, _ = world.card(31, status=1)
    assert top_up(k, lost, 1_000).rc == "41"
    gate_reader = reader(world, TERM_BUS_READER, 310000)
    assert top_up(gate_reader, pan, 1_000).rc == "58"                  # a reader cannot
    (no_list,) = k.send([native.DenyListSync(k.next_seq(), 0)])      # nor a kiosk sync
    assert isinstance(no_list, native.DenyListReply) and no_list.rc == "58"
    assert world.balance(idx) == before


def test_whole_list_sync_gives_a_card_relisted_after_a_top_up_as_denied(world):
    """A gate starting from version 0 must end up refusing a card that is on the list now,
    whatever happened to it before."""
    bus = reader(world, TERM_BUS_READER, 310000)
    pan, idx = world.card(31, **YOUNG)
    world.set_balance(idx, 0)
    bus.send([offline(bus, 1001, pan, 0, T0)])                         # listed
    assert operations.credit(world.engine.authoriser, int(pan), 1000)[0] == "00"  # removed
    world.set_balance(idx, 0)
    bus.send([offline(bus, 1002, pan, 0, T0 + 1000 * MIN)])            # listed again
    assert tap(bus, pan, when=T0 + 2000 * MIN).rc == "05"
    whole = sync(bus, 0)
    denied = set(whole.added) - set(whole.removed)
    assert pan in denied


def test_deny_list_sync_pages_by_version(world):
    """At most 1,000 changes a reply; the gate asks again from the version it was given."""
    bus = reader(world, TERM_BUS_READER, 310000)
    yrd = [world.province_index(p) for p in (31, 32, 33, 34)]
    c = world.state.cards
    usable = np.isin(world.card_province, yrd) & (c["status"] == 0) & (c["functions"] == 7)
    usable &= c["expiry_yymm"] >= int(dt.date.today().strftime("%y%m"))
    indexes = np.flatnonzero(usable)[:1001].tolist()
    assert len(indexes) == 1001
    chosen = [str(int(c["pan"][idx])) for idx in indexes]
    for idx in indexes:
        world.set_balance(idx, 0)
        set_flags(world, idx, 0)
        world.state.accounts["birth_day"][world.state.cards["account"][idx]] = 35000
    replies = bus.send([offline(bus, 1000 + k, pan, 0, T0 + k) for k, pan in enumerate(chosen)])
    assert all(r.rc == "00" and r.balance_fen < 0 for r in replies)
    first = sync(bus, 0)
    assert (first.version, len(first.added), first.removed) == (1000, 1000, [])
    rest = sync(bus, first.version)
    assert rest.version == 1001 and first.added + rest.added == chosen
    assert sync(bus, rest.version).added == []


# ---- acceptance across regions and HMT residents ------------------------------------------


@pytest.mark.parametrize(("province", "code"), [(31, "00"), (32, "00"), (33, "00"), (34, "00"),
                                                (11, "62"), (12, "62"), (13, "62"), (44, "62")])
def test_shanghai_gates_take_yrd_cards_only(world, province, code):
    net = Network(world, "SHMETRO")
    pan, idx = world.card(province, **YOUNG)
    before = world.balance(idx)
    bus = tap(reader(world, TERM_BUS_READER, 310000), pan, when=T0)
    metro = tap(gate(world, net, "1号线", "莘庄"), pan, native.TAP_IN, T0 + 1000 * MIN)
    assert (bus.rc, metro.rc) == (code, code)
    spent = flat_fare(world, "BUS310000") if code == "00" else 0
    assert world.balance(idx) == before - spent


def test_hmt_residents_ride_in_guangdong_exactly_like_locals(world):
    today = pin_clock(world, 2, 10)
    net = Network(world, "GZMETRO")
    holders = [world.card(44, flags=lambda f: f == HOLDER_HMT),     # HMT resident, and local
               world.card(44, flags=lambda f: f == 0)]
    gz_bus, sh_bus = reader(world, TERM_BUS_READER, 440100), reader(world, TERM_BUS_READER,
                                                                     310000)
    entry, exit_ = gate(world, net, "1号线", "西塱"), gate(world, net, "3号线", "番禺广场")
    results = []
    for years in (30, region_policy(world, 440100)["elderly_age"]):
        for pan, idx in holders:
            set_age(world, idx, years, today)
            world.set_balance(idx, 100_000)
            when = T0 + years * 10_000
            bus = tap(gz_bus, pan, when=when)
            trip = ride(entry, exit_, pan, when + 500 * MIN, when + 560 * MIN)
            elsewhere = tap(sh_bus, pan, when=T0)
            results.append((bus.rc, bus.fare_fen, trip.rc, trip.fare_fen, world.balance(idx),
                            elsewhere.rc))
    hmt_young, local_young, hmt_old, local_old = results
    assert hmt_young == local_young
    assert hmt_young[:4] == ("00", flat_fare(world, "BUS440100"), "00",
                             net.fare("西塱", "番禺广场"))
    assert hmt_old == local_old and hmt_old[1] == hmt_old[3] == 0
    assert hmt_young[5] == "62"                                        # GBA has no joint list


# ---- over TCP -----------------------------------------------------------------------------


@pytest.mark.slow
@ON_BOTH_STORES
def test_offline_upload_and_deny_sync_over_tcp(running_switch, world):
    net = Network(world, "SHMETRO")
    pan, idx = world.card(31, min_balance=1, balance_fen=lambda b: b < net.max_fare(),
                          **YOUNG)
    balance = world.balance(idx)
    sock, exchange = socket_exchange("127.0.0.1", running_switch.native, 4)
    try:
        info = next(t for t in world.terminals
                    if t.kind == TERM_METRO_GATE and t.station_id == net.ids[("1号线", "莘庄")])
        g = NativeTerminal(info, exchange)
        assert g.signon().rc == "00"
        start = sync(g, 0).version
        batch = [offline(g, 1001, pan, native.TAP_IN, T0),
                 offline(g, 1002, pan, native.TAP_IN, T0 + 30 * MIN)]
        first = g.send(batch)
        assert [(r.rc, r.fare_fen) for r in first] == [("00", 0), ("00", net.max_fare())]
        assert first[1].balance_fen == balance - net.max_fare() < 0
        assert [r.rc for r in g.send(batch)] == ["94", "94"]
        listed = sync(g, start)
        assert (listed.version, listed.added, listed.removed) == (start + 1, [pan], [])
        (online,) = g.send([native.Tap(g.next_seq(), pan, info.station_id, native.TAP_IN, 0)])
        assert online.rc == "05" and online.balance_fen == balance - net.max_fare()
    finally:
        sock.close()
    running_switch.kill9()                                             # a crash: journal replay
    again = start_switch(running_switch.data_dir)
    try:
        sock, exchange = socket_exchange("127.0.0.1", again.native, 4)
        g = NativeTerminal(info, exchange, seq=100)
        assert g.signon().rc == "00"
        whole = sync(g, 0)
        assert whole.version == listed.version and pan in whole.added
        (online,) = g.send([native.Tap(g.next_seq(), pan, info.station_id, native.TAP_IN, 0)])
        assert online.rc == "05"
        assert [r.rc for r in g.send(batch)] == ["94", "94"]
        sock.close()
    finally:
        again.stop()
