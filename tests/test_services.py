"""Service terminals through the compiled engine (real native frames, msgspec on the terminal
side) and once over TCP: identity verification within the terminal's data scope, venue entry
with entitlements and time windows, medical settlement and its refund, cross-region
acceptance and HMT residents.

Expected amounts come from the data set's tables (regions' medical columns, price policies,
filings, holders), never from the switch's answers.
"""

import datetime as dt
import json
import time

import msgspec
import numpy as np
import pytest

from onecard.core.engine import NATIVE
from onecard.core.journal import unpack
from onecard.core.state import (
    CARD_LOST,
    HOLDER_DISABLED,
    HOLDER_HMT,
    KIND_HEARTBEAT,
    KIND_VENUE,
    KIND_VERIFY,
    SCOPE_DEFAULT,
    SCOPE_LODGING,
    TERM_MEDICAL,
    TERM_VERIFIER,
)
from onecard.protocols import native
from onecard.protocols.codes import CODE_INDEX
from onecard.protocols.journal_codec import view
from onecard.switch.reference import GROUPS

from checker import committed_journal
from conftest import ON_BOTH_STORES
from termsim import NativeTerminal, socket_exchange

CST = dt.timezone(dt.timedelta(hours=8))
PLAIN = {"flags": lambda f: f == 0}
MON, WED, SAT = 0, 2, 5


# ---- helpers ------------------------------------------------------------------------------


def service_info(world, place: str, region_code: int, index: int = 0):
    tids = [tid for (tid,) in world.query(
        "SELECT t.tid FROM terminals t JOIN regions r ON r.idx = t.region_idx "
                        "WHERE t.place = ? AND r.code = ? AND t.protocol = ? "
                        "ORDER BY t.idx", place, region_code, NATIVE)]
    return next(t for t in world.terminals if t.tid == tids[index])


def service(world, place: str, region_code: int = 310000, index: int = 0) -> NativeTerminal:
    t = NativeTerminal(service_info(world, place, region_code, index), world.exchange(NATIVE))
    assert t.signon().rc == "00"
    return t


def one(t: NativeTerminal, message_type, *fields):
    (r,) = t.send([message_type(t.next_seq(), *fields)])
    return r


def pin_clock(world, weekday: int, hour: int) -> dt.date:
    """Set the engine's clock to hour:30 China time on the latest such weekday (0 = Monday)
    up to today; returns that date."""
    today = dt.datetime.now(CST).date()
    day = today - dt.timedelta(days=(today.weekday() - weekday) % 7)
    pin_at(world, dt.datetime(day.year, day.month, day.day, hour, 30, tzinfo=CST))
    return day


def pin_at(world, when: dt.datetime) -> None:
    world.engine.clock_offset_us = int(when.timestamp() * 1_000_000) - time.time_ns() // 1000


def account(world, idx: int) -> int:
    return int(world.state.cards["account"][idx])


def set_age(world, idx: int, years: int, on: dt.date, *, days_short: int = 0) -> None:
    born = on.replace(year=on.year - years) + dt.timedelta(days=days_short)
    world.state.accounts["birth_day"][account(world, idx)] = (born - dt.date(1900, 1, 1)).days


def holder(world, idx: int) -> tuple[str, str]:
    return world.holder(idx)


def surname(world, idx: int) -> str:
    ((s,),) = world.query("SELECT surname FROM surnames WHERE idx = ?",
                          int(world.state.accounts["surname"][account(world, idx)]))
    return s


def region_code(world, idx: int) -> int:
    return int(world.state.regions["code"][world.state.cards["region"][idx]])


# ---- identity verification ----------------------------------------------------------------

AGE_CASES = [(17, 0, "under 18"), (18, 0, "18-59"), (59, 0, "18-59"), (60, 1, "18-59"),
             (60, 0, "60-64"), (64, 0, "60-64"), (65, 0, "65-69"), (69, 0, "65-69"),
             (70, 0, "70-79"), (79, 0, "70-79"), (80, 0, "80+"), (80, 1, "70-79")]


def test_default_scope_gives_masked_name_age_band_and_region_only(world):
    day = pin_clock(world, WED, 10)
    counter = service(world, "government counter")
    compound = [i for (i,) in world.query("SELECT idx FROM surnames WHERE length(surname) > 1")]
    cards = [world.card(31)]
    for p in (31, 32, 33, 34):
        try:
            cards.append(world.card(p, surname=lambda s: np.isin(s, compound)))
            break
        except IndexError:
            continue
    assert len(cards) == 2 and len(surname(world, cards[1][1])) == 2
    for pan, idx in cards:
        r = one(counter, native.Verify, pan)
        full, ident = holder(world, idx)
        sn = surname(world, idx)
        assert isinstance(r, native.VerifyReply) and r.rc == "00"
        assert r.name == sn + "*" * (len(full) - len(sn)) and full not in r.name
        assert r.id_number == "" and ident not in repr(r)
        assert r.region == region_code(world, idx)
    pan, idx = cards[0]
    for years, short, band in AGE_CASES:
        set_age(world, idx, years, day, days_short=short)
        r = one(counter, native.Verify, pan)
        assert native.AGE_BANDS[r.age_band] == band, (years, short)


def test_lodging_terminals_get_full_name_and_identity_number(world):
    hotel = service(world, "hotel")
    pan, idx = world.card(31)
    r = one(hotel, native.Verify, pan)
    name, ident = holder(world, idx)
    assert r.rc == "00" and r.name == name and r.id_number == ident
    assert len(r.id_number) == 18 and r.region == region_code(world, idx)


def test_venue_gates_never_get_an_identity_number(world):
    pan, idx = world.card(31)
    _, ident = holder(world, idx)
    for place in ("museum", "library", "scenic spot", "sports venue"):
        gate = service(world, place)
        refused = one(gate, native.Verify, pan)
        assert (refused.rc, refused.name, refused.id_number) == ("58", "", "")
        (frame,) = gate.send_raw(gate.frame([native.VenueEntry(gate.next_seq(), pan)]))
        (raw,) = msgspec.msgpack.decode(frame.body)
        assert raw[0] == 109 and raw[2] == "00"                      # a VenueReply, approved
        assert [type(v) for v in raw] == [int, int, str, int, int, int]
        assert ident.encode() not in frame.body
    assert not {"id_number", "name"} & set(native.VenueReply.__struct_fields__)


def test_verification_is_journaled_with_the_scope_used(world):
    counter, hotel = service(world, "government counter"), service(world, "hotel")
    pan, idx = world.card(31)
    world.engine.journal.take()                                        # the sign-ons
    a = counter.verify(pan)
    b = hotel.verify(pan)
    counter.send([a])
    hotel.send([b])
    recs = unpack(world.engine.journal.take()[1])
    got = [(int(r["terminal"]), int(r["seq"]), int(r["card"]), int(r["scope"]))
           for r in view(recs[recs["kind"] == KIND_VERIFY], "verify")]
    assert got == [(counter.info.idx, a.seq, idx, SCOPE_DEFAULT),
                   (hotel.info.idx, b.seq, idx, SCOPE_LODGING)]


def test_verify_refuses_lost_cards_and_other_groups_at_counters_not_hotels(world):
    counter, hotel = service(world, "government counter"), service(world, "hotel")
    lost, lost_idx = world.card(31)
    world.state.cards["status"][lost_idx] = CARD_LOST
    jiangsu, _ = world.card(32)
    beijing, bj_idx = world.card(11)
    assert [one(counter, native.Verify, p).rc for p in (lost, jiangsu, beijing)] == [
        "41", "00", "62"]
    refused = one(hotel, native.Verify, lost)
    assert (refused.rc, refused.name, refused.id_number) == ("41", "", "")
    r = one(hotel, native.Verify, beijing)                  # hotel registration: any province
    assert r.rc == "00" and (r.name, r.id_number) == holder(world, bj_idx)


# ---- venues -------------------------------------------------------------------------------


def policy(world, name: str) -> tuple[int, list]:
    ((base, rules),) = world.query("SELECT base_fen, rules FROM policies "
                                   "WHERE name = ?", name)
    return base, json.loads(rules)


def rule(rules: list, kind: int, param: int) -> tuple[int, int]:
    """(entitlement number as the reply gives it, percent paid) of a policy's rule."""
    (n,) = [i for i, r in enumerate(rules) if r[0] == kind and r[1] == param]
    return n + 1, rules[n][2]


def enter(t: NativeTerminal, pan: str) -> native.VenueReply:
    r = one(t, native.VenueEntry, pan)
    assert isinstance(r, native.VenueReply)
    return r


def test_scenic_spot_entitlements_by_age_and_disability(world):
    day = pin_clock(world, WED, 13)                                    # outside 9-12
    base, rules = policy(world, "scenic spot")
    gate = service(world, "scenic spot")
    cases = [(30, 0, (0, 100)), (65, 0, rule(rules, 2, 65)), (64, 0, rule(rules, 2, 60)),
             (60, 0, rule(rules, 2, 60)), (30, HOLDER_DISABLED, rule(rules, 3, 0))]
    for n, (years, flags, (entitlement, pct)) in enumerate(cases):
        pan, idx = world.card(31, nth=n)
        set_age(world, idx, years, day)
        world.state.accounts["flags"][account(world, idx)] = flags
        before = world.balance(idx)
        r = enter(gate, pan)
        assert (r.rc, r.fee_fen, r.entitlement) == ("00", base * pct // 100, entitlement)
        assert r.balance_fen == before - r.fee_fen == world.balance(idx)
    assert rule(rules, 2, 65)[1] == 0 < rule(rules, 2, 60)[1] < 100


def test_region_group_residents_get_the_morning_window_discount(world):
    base, rules = policy(world, "scenic spot")
    groups = dict(world.query("SELECT code, grp FROM regions"))
    cases = [(310000, 32, rule(rules, 4, GROUPS.index(groups[310000]))),
             (110000, 12, rule(rules, 4, GROUPS.index(groups[110000])))]
    for venue_region, province, (entitlement, pct) in cases:
        day = pin_clock(world, WED, 10)
        gate = service(world, "scenic spot", venue_region)
        pan, idx = world.card(province, **PLAIN)
        set_age(world, idx, 30, day)
        inside = enter(gate, pan)
        pin_clock(world, WED, 13)
        outside = enter(gate, pan)
        assert (inside.rc, inside.fee_fen, inside.entitlement) == ("00", base * pct // 100,
                                                                   entitlement)
        assert (outside.rc, outside.fee_fen, outside.entitlement) == ("00", base, 0)


def test_sports_venue_weekday_morning_window(world):
    base, rules = policy(world, "sports venue")
    everyone = rule(rules, 1, 0)
    (_, _, _, start, end, weekdays) = rules[everyone[0] - 1]
    assert start <= 7 < end and weekdays >> WED & 1 and not weekdays >> SAT & 1
    gate = service(world, "sports venue")
    young, y_idx = world.card(31, **PLAIN)
    older, o_idx = world.card(31, nth=1, **PLAIN)
    day = pin_clock(world, WED, 7)
    set_age(world, y_idx, 30, day)
    set_age(world, o_idx, 61, day)
    weekday_young, weekday_older = enter(gate, young), enter(gate, older)
    pin_clock(world, SAT, 7)
    saturday = enter(gate, young)
    pin_clock(world, WED, 10)
    later = enter(gate, young)
    assert (weekday_young.fee_fen, weekday_young.entitlement) == (
        base * everyone[1] // 100, everyone[0])
    best = rule(rules, 2, 60)                                          # the lower price wins
    assert (weekday_older.fee_fen, weekday_older.entitlement) == (base * best[1] // 100,
                                                                   best[0])
    assert (saturday.fee_fen, saturday.entitlement) == (base, 0)
    assert (later.fee_fen, later.entitlement) == (base, 0)


def test_venue_fee_needs_the_money(world):
    pin_clock(world, WED, 13)
    base, _ = policy(world, "scenic spot")
    pan, idx = world.card(31, birth_day=lambda b: b > 30000, **PLAIN)
    world.set_balance(idx, base - 1)
    r = enter(service(world, "scenic spot"), pan)
    assert (r.rc, r.fee_fen, world.balance(idx)) == ("51", 0, base - 1)


def test_museum_free_library_entry_is_a_card_check_that_counts(world):
    museum, library = service(world, "museum"), service(world, "library")
    scenic = service(world, "scenic spot")
    pan, idx = world.card(31)
    before = world.balance(idx)
    assert policy(world, "museum (free)")[0] == policy(world, "library (free)")[0] == 0
    visit = enter(museum, pan)
    assert (visit.rc, visit.fee_fen, visit.balance_fen) == ("00", 0, before)
    no_money_function, nm_idx = world.card(31, functions=6)
    lost, lost_idx = world.card(31, nth=1)
    world.state.cards["status"][lost_idx] = CARD_LOST
    world.engine.journal.take()
    borrow = enter(library, pan)
    assert (borrow.rc, borrow.fee_fen, borrow.balance_fen) == ("00", 0, before)
    assert enter(library, no_money_function).rc == "00"
    assert enter(library, lost).rc == "41"
    assert enter(scenic, no_money_function).rc == "57"                 # a paid venue needs it
    recs = unpack(world.engine.journal.take()[1])
    entries = [(int(r["terminal"]), int(r["card"])) for r in recs
               if r["kind"] == KIND_VENUE and r["rc"] == CODE_INDEX["00"]]
    assert entries == [(library.info.idx, idx), (library.info.idx, nm_idx)]
    assert world.balance(idx) == before


@pytest.mark.parametrize(("province", "code"), [(31, "00"), (32, "00"), (34, "00"), (11, "62"),
                                                (44, "62")])
def test_shanghai_museum_takes_yrd_cards(world, province, code):
    pan, _ = world.card(province)
    assert enter(service(world, "museum"), pan).rc == code


# ---- medical settlement -------------------------------------------------------------------


class Insurance:
    """The insuring region's policy from the regions table, with the card's annual totals."""

    def __init__(self, world, idx: int) -> None:
        code = int(world.state.regions["code"][
            world.state.accounts["region"][account(world, idx)]])
        ((self.deductible, self.ratio, self.cap),) = world.query(
            "SELECT med_deductible_fen, med_ratio_pct, med_cap_fen "
                            "FROM regions WHERE code = ?", code)
        self.deductible_used = self.pool_paid = 0

    def split(self, bill: int, medical: int) -> tuple[int, int, int]:
        ded = min(max(self.deductible - self.deductible_used, 0), bill)
        pool = min((bill - ded) * self.ratio // 100, max(self.cap - self.pool_paid, 0))
        personal = min(bill - pool, medical)
        self.deductible_used += ded
        self.pool_paid += pool
        return pool, personal, bill - pool - personal


def fund(world, idx: int, *, medical: int, balance: int) -> None:
    world.state.accounts["medical_fen"][account(world, idx)] = medical
    world.set_balance(idx, balance)


def medical_fen(world, idx: int) -> int:
    return int(world.state.accounts["medical_fen"][account(world, idx)])


def settle(t: NativeTerminal, pan: str, bill: int) -> native.MedicalReply:
    r = one(t, native.Medical, pan, bill)
    assert isinstance(r, native.MedicalReply)
    return r


def shares(r) -> tuple[int, int, int]:
    return r.pool_fen, r.personal_fen, r.cash_fen


def test_bill_split_applies_the_deductible_once_then_the_pool_ratio(world):
    hospital = service(world, "hospital")
    pan, idx = world.card(31)
    fund(world, idx, medical=1_000_000, balance=1_000_000)
    ins = Insurance(world, idx)
    medical, balance = 1_000_000, 1_000_000
    bills = [ins.deductible * 2 // 3, ins.deductible, 200_000]
    for bill in bills:
        pool, personal, cash = ins.split(bill, medical)
        medical, balance = medical - personal, balance - cash
        r = settle(hospital, pan, bill)
        assert r.rc == "00" and shares(r) == (pool, personal, cash)
        assert (r.medical_fen, r.balance_fen) == (medical, balance)
    assert (medical_fen(world, idx), world.balance(idx)) == (medical, balance)
    assert ins.deductible_used == ins.deductible                       # spread over two bills


def test_annual_cap_binds_the_pool(world):
    hospital = service(world, "hospital", 340100)
    pan, idx = world.card(34)
    fund(world, idx, medical=0, balance=100_000_000)
    ins = Insurance(world, idx)
    bill = world.engine.authoriser.amount_fen_max
    pools = []
    while not pools or pools[-1]:
        expected = ins.split(bill, 0)
        r = settle(hospital, pan, bill)
        assert r.rc == "00" and shares(r) == expected
        pools.append(r.pool_fen)
    assert sum(pools) == ins.cap and 0 < pools[-2] < pools[-3]         # bound, then nothing


def test_personal_account_first_then_cash_which_must_be_there(world):
    hospital = service(world, "hospital")
    pan, idx = world.card(31)
    ins = Insurance(world, idx)
    bill = ins.deductible // 2
    fund(world, idx, medical=bill // 4, balance=bill // 2)
    refused = settle(hospital, pan, bill)
    assert refused.rc == "51" and shares(refused) == (0, 0, 0)
    assert (medical_fen(world, idx), world.balance(idx)) == (bill // 4, bill // 2)
    world.set_balance(idx, bill)
    r = settle(hospital, pan, bill)
    assert r.rc == "00" and shares(r) == (0, bill // 4, bill - bill // 4)
    assert (r.medical_fen, r.balance_fen) == (0, bill // 4) == (medical_fen(world, idx),
                                                                world.balance(idx))


def filed_card(world) -> tuple[str, int, int]:
    """A usable card whose holder filed for treatment in another province (demo filings)."""
    c = world.state.cards
    for acct, province in world.query("SELECT account, province FROM filings "
                                      "ORDER BY account"):
        for idx in np.flatnonzero(c["account"] == acct).tolist():
            if (c["status"][idx] == 0 and c["functions"][idx] & 4
                    and c["expiry_yymm"][idx] >= int(dt.date.today().strftime("%y%m"))
                    and world.provinces[world.card_province[idx]] != province):
                return str(int(c["pan"][idx])), idx, province
    raise AssertionError("the demo data has no usable filing")


def test_remote_settlement_needs_a_filing_for_that_province(world):
    pan, idx = world.card(32)
    fund(world, idx, medical=50_000, balance=50_000)
    m1 = settle(service(world, "hospital"), pan, 30_000)
    assert m1.rc == "M1" and shares(m1) == (0, 0, 0)
    assert (medical_fen(world, idx), world.balance(idx)) == (50_000, 50_000)
    filed, f_idx, province = filed_card(world)
    fund(world, f_idx, medical=100_000, balance=1_000_000)
    ins = Insurance(world, f_idx)                                      # the home region's
    bill = ins.deductible + 100_000
    r = settle(world.native(TERM_MEDICAL, province, index=1), filed, bill)
    assert r.rc == "00" and shares(r) == ins.split(bill, 100_000)
    third = next(p for p in (31, 32, 33, 34, 44, 11)
                 if p not in (province, world.provinces[world.card_province[f_idx]]))
    assert settle(world.native(TERM_MEDICAL, third, index=2), filed, bill).rc == "M1"


def test_refund_restores_every_share_once(world):
    hospital = service(world, "hospital")
    pan, idx = world.card(31)
    fund(world, idx, medical=100_000, balance=1_000_000)
    bill = 400_000
    first = settle(hospital, pan, bill)
    assert first.rc == "00" and first.pool_fen and first.personal_fen and first.cash_fen
    refund = one(hospital, native.MedicalRefund, pan, first.seq)
    assert isinstance(refund, native.MedicalRefundReply) and refund.rc == "00"
    assert shares(refund) == shares(first)
    assert (refund.medical_fen, refund.balance_fen) == (100_000, 1_000_000)
    assert (medical_fen(world, idx), world.balance(idx)) == (100_000, 1_000_000)
    again = one(hospital, native.MedicalRefund, pan, first.seq)
    assert again.rc == "25" and world.balance(idx) == 1_000_000
    other, _ = world.card(31, nth=1)
    assert one(hospital, native.MedicalRefund, other, first.seq).rc == "25"
    repeat = settle(hospital, pan, bill)                 # the annual totals were restored too
    assert shares(repeat) == shares(first)


def test_refund_in_the_next_year_restores_the_year_of_the_settlement(world):
    """A refund gives back to the annual totals of the year the settlement was made in; the
    new year's deductible, once used, stays used."""
    hospital = service(world, "hospital")
    pan, idx = world.card(31)
    fund(world, idx, medical=1_000_000, balance=1_000_000)
    ins = Insurance(world, idx)
    last_year = dt.datetime.now(CST).year - 1
    pin_at(world, dt.datetime(last_year, 12, 31, 10, 30, tzinfo=CST))
    old = settle(hospital, pan, ins.deductible // 2)
    pin_at(world, dt.datetime(last_year + 1, 1, 2, 10, 30, tzinfo=CST))
    ins.deductible_used = 0                                            # a new year
    assert shares(settle(hospital, pan, ins.deductible)) == ins.split(ins.deductible, 10**9)
    assert one(hospital, native.MedicalRefund, pan, old.seq).rc == "00"
    bill = 100_000
    r = settle(hospital, pan, bill)
    assert shares(r) == ins.split(bill, 10**9) and r.pool_fen == bill * ins.ratio // 100


def test_retransmitted_settlement_gets_the_original_reply(world):
    hospital = service(world, "hospital")
    pan, idx = world.card(31)
    fund(world, idx, medical=1_000_000, balance=1_000_000)
    bill = native.Medical(hospital.next_seq(), pan, 300_000)
    (first,) = hospital.send([bill])
    (again,) = hospital.send([bill])
    (changed,) = hospital.send([native.Medical(bill.seq, pan, 300_001)])
    assert first.rc == "00" and 0 < first.medical_fen < 1_000_000
    assert changed.rc == "94"
    assert (medical_fen(world, idx), world.balance(idx)) == (first.medical_fen,
                                                             first.balance_fen)
    assert again == first


def test_retransmitted_refund_gets_the_original_reply(world):
    hospital = service(world, "hospital")
    pan, idx = world.card(31)
    fund(world, idx, medical=100_000, balance=1_000_000)
    paid = settle(hospital, pan, 300_000)
    refund = native.MedicalRefund(hospital.next_seq(), pan, paid.seq)
    (first,) = hospital.send([refund])
    (again,) = hospital.send([refund])
    assert first.rc == "00" and shares(first) == shares(paid)
    assert (medical_fen(world, idx), world.balance(idx)) == (100_000, 1_000_000)
    assert again == first


def test_refund_seq_reused_for_another_settlement_is_94(world):
    hospital = service(world, "hospital")
    pan, idx = world.card(31)
    fund(world, idx, medical=1_000_000, balance=1_000_000)
    a, b = settle(hospital, pan, 200_000), settle(hospital, pan, 50_000)
    assert a.rc == b.rc == "00" and b.personal_fen > 0
    seq = hospital.next_seq()
    (first,) = hospital.send([native.MedicalRefund(seq, pan, a.seq)])
    (other,) = hospital.send([native.MedicalRefund(seq, pan, b.seq)])
    assert first.rc == "00" and other.rc == "94"
    assert medical_fen(world, idx) == 1_000_000 - b.personal_fen       # b still stands
    assert world.balance(idx) == 1_000_000 - b.cash_fen
    (late,) = hospital.send([native.MedicalRefund(hospital.next_seq(), pan, b.seq)])
    assert late.rc == "00" and shares(late) == shares(b)               # b can still be refunded


def test_medical_needs_a_medical_terminal_and_the_medical_function(world):
    pan, _ = world.card(31)
    assert one(world.native(TERM_VERIFIER), native.Medical, pan, 100).rc == "58"
    no_medical, _ = world.card(31, functions=3)
    assert settle(service(world, "pharmacy"), no_medical, 100).rc == "57"


# ---- HMT residents ------------------------------------------------------------------------


def test_hmt_residents_are_served_like_locals_in_guangdong(world):
    day = pin_clock(world, WED, 13)
    hmt = world.card(44, flags=lambda f: f == HOLDER_HMT)
    local = world.card(44, flags=lambda f: f == 0)
    terminals = [service(world, place, 440100) for place in
                 ("government counter", "hotel", "scenic spot", "museum", "hospital")]
    counter, hotel, scenic, museum, hospital = terminals
    seen = []
    for years in (30, 66):
        for pan, idx in (hmt, local):
            set_age(world, idx, years, day)
            fund(world, idx, medical=20_000, balance=500_000)
            v, h = one(counter, native.Verify, pan), one(hotel, native.Verify, pan)
            name, ident = holder(world, idx)
            assert (v.rc, h.rc, h.name, h.id_number, v.id_number) == ("00", "00", name, ident, "")
            e, m = enter(scenic, pan), enter(museum, pan)
            bill = settle(hospital, pan, 50_000)
            seen.append((v.age_band, len(v.name), v.region // 10000, e.rc, e.fee_fen,
                         e.entitlement, m.rc, bill.rc, shares(bill)))
    assert seen[0][:3] == (1, len(holder(world, hmt[1])[0]), 44) and seen[0][3] == "00"
    hmt_young, local_young, hmt_old, local_old = seen
    assert hmt_young[3:] == local_young[3:] and hmt_old[3:] == local_old[3:]
    assert hmt_young[4] > hmt_old[4]                                   # the age entitlement
    assert holder(world, hmt[1])[1][:2] in ("81", "82", "83")          # a residence permit


# ---- over TCP -----------------------------------------------------------------------------


@pytest.mark.slow
@ON_BOTH_STORES
def test_services_over_tcp_and_the_scope_in_the_committed_journal(running_switch, world):
    pan, idx = world.card(31)
    sock, exchange = socket_exchange("127.0.0.1", running_switch.native, 4)
    try:
        counter, hotel, hospital = (NativeTerminal(service_info(world, place, 310000), exchange)
                                    for place in ("government counter", "hotel", "hospital"))
        assert all(t.signon().rc == "00" for t in (counter, hotel, hospital))
        a, b = counter.verify(pan), hotel.verify(pan)
        (masked,), (full,) = counter.send([a]), hotel.send([b])
        name, ident = holder(world, idx)
        assert masked.rc == full.rc == "00" and masked.id_number == ""
        assert (full.name, full.id_number) == (name, ident)
        bill = native.Medical(hospital.next_seq(), pan, 20_000)
        (paid,) = hospital.send([bill])
        (back,) = hospital.send([native.MedicalRefund(hospital.next_seq(), pan, bill.seq)])
        assert paid.rc == back.rc == "00" and shares(back) == shares(paid)
        assert sum(shares(paid)) == 20_000
    finally:
        sock.close()
    recs, _, _ = committed_journal(running_switch.data_dir)
    got = {(int(r["terminal"]), int(r["seq"])): int(r["scope"])
           for r in view(recs[recs["kind"] == KIND_VERIFY], "verify")}
    assert got == {(counter.info.idx, a.seq): SCOPE_DEFAULT, (hotel.info.idx, b.seq):
                   SCOPE_LODGING}


def test_latency_histograms_count_every_kind_of_a_batch(world):
    """Kinds numbered 16 and up (medical refund, venue, top-up, ...) were counted past the
    end of a batch's per-kind table, in the next batch's record: once that batch began
    before the first was written (as when both wait for one commit), the histograms
    counted its clock reading as venue entries."""
    gate = service(world, "museum")
    pan = world.card()[0]
    m = world.engine.metrics
    before = m.latency[NATIVE].sum(axis=1).copy()
    venues = gate.frame([native.VenueEntry(gate.next_seq(), pan) for _ in range(3)])
    beat = gate.frame([native.Heartbeat(gate.next_seq())])
    batches = [world.engine.process(NATIVE, frame)[2] for frame in (venues, beat)]
    for batch in batches:
        m.written(batch)
    added = m.latency[NATIVE].sum(axis=1) - before
    assert added[KIND_VENUE] == 3 and added[KIND_HEARTBEAT] == 1
    assert added.sum() == 4                             # nothing counted under other kinds
