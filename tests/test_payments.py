"""Payments at POS terminals (issue 4): void (撤销) and its reversal, settlement (0500), canteen
meal discounts by age tier, HKD/MOP acquiring, per-application daily limits, cross-region
acceptance. Requests built with pyiso8583 (termsim), through the compiled Engine in process
and, at the end, over TCP to a real switch process."""

import datetime as dt
import time

import numpy as np
import pytest

from onecard.core.engine import ISO8583, Engine
from onecard.core.journal import unpack
from onecard.core.state import HOLDER_HMT, KIND_PURCHASE, KIND_VOID, TERM_POS
from onecard.protocols.codes import CODE_INDEX
from onecard.protocols.journal_codec import view
from onecard.switch.config import FxConfig
from onecard.switch.demo import POLICY_INDEX

from checker import committed_journal
from conftest import ON_BOTH_STORES, start_switch
from termsim import IsoTerminal, socket_exchange

DAY_US = 86_400 * 1_000_000
CST = dt.timezone(dt.timedelta(hours=8))               # cards are used in China time
HKD, MOP, USD = "344", "446", "840"


# ---- helpers ---------------------------------------------------------------------------------

def canteen(world, tier: str, province: int = 31) -> IsoTerminal:
    """A signed-on elderly canteen POS whose price policy is 'canteen tiers <tier>'."""
    policy = world.state.terminals["policy"]
    want = POLICY_INDEX[f"canteen tiers {tier}"]
    info = next(t for t in world.terminals
                if t.kind == TERM_POS and t.province == province and policy[t.idx] == want)
    t = IsoTerminal(info, world.exchange(ISO8583))
    assert t.signon()["39"] == "00"
    return t


def set_age(world, idx: int, years: int) -> None:
    """Make the holder ``years`` old, half a year away from a birthday (whatever the time)."""
    born = dt.date.today() - dt.timedelta(days=round(years * 365.25) + 182)
    account = world.state.cards["account"][idx]
    world.state.accounts["birth_day"][account] = (born - dt.date(1900, 1, 1)).days


def funded_card(world, province: int = 31, balance: int = 1_000_000, nth: int = 0,
                **account) -> tuple[str, int]:
    pan, idx = world.card(province, min_balance=0, nth=nth, **account)
    world.set_balance(idx, balance)
    return pan, idx


def pin_clock(world, when: dt.datetime) -> None:
    """Run the engine's clock from ``when`` (China time) instead of now."""
    world.engine.clock_offset_us = int(when.timestamp() * 1e6) - time.time_ns() // 1000


@pytest.fixture(autouse=True)
def midday(world):
    """Decide at noon China time, today: no test straddles midnight."""
    pin_clock(world, dt.datetime.combine(dt.datetime.now(CST).date(), dt.time(12), CST))


@pytest.fixture
def fx_world(world):
    """The world with the exchange rates the switch is configured with by default."""
    offset = world.engine.clock_offset_us
    world.engine = Engine(world.state, next_record_no=world.engine.journal.next_no,
                          fx_rates=FxConfig().rates())
    world.engine.clock_offset_us = offset
    return world


# ---- void (撤销) -----------------------------------------------------------------------------

def test_void_of_todays_purchase_gives_the_money_back(world):
    t = world.iso()
    pan, idx = funded_card(world)
    before = world.balance(idx)
    (p,) = t.send(t.purchase(pan, 2_500, stan="000100"))
    assert p["39"] == "00" and world.balance(idx) == before - 2_500
    (v,) = t.send(t.void(pan, 2_500, "000100", stan="000101"))
    assert v["t"] == "0210" and v["39"] == "00"
    assert v["3"] == "200000" and v["11"] == "000101" and v["6"] == "000000002500"
    assert len(v["37"]) == 12 and len(v["38"]) == 6 and v["37"] != p["37"]
    assert t.verify_reply_mac(v)
    assert world.balance(idx) == before


def test_second_void_of_the_same_purchase_is_refused(world):
    t = world.iso()
    pan, idx = funded_card(world)
    before = world.balance(idx)
    t.send(t.purchase(pan, 700, stan="000200"))
    (first, second) = t.send(t.void(pan, 700, "000200", stan="000201"),
                             t.void(pan, 700, "000200", stan="000202"))
    assert (first["39"], second["39"]) == ("00", "25")
    assert "6" not in second
    assert world.balance(idx) == before                  # credited once, not twice


@pytest.mark.parametrize("case", ["unknown stan", "other amount", "other card",
                                  "other terminal", "declined purchase"])
def test_void_without_a_matching_purchase_is_25(world, case):
    t = world.iso()
    pan, idx = funded_card(world)
    other_pan, other_idx = funded_card(world, nth=1)
    if case == "declined purchase":
        world.set_balance(idx, 50)
    (p,) = t.send(t.purchase(pan, 900, stan="000300"))
    assert p["39"] == ("51" if case == "declined purchase" else "00")
    voider, v_pan, amount, orig = t, pan, 900, "000300"
    if case == "unknown stan":
        orig = "000399"
    elif case == "other amount":
        amount = 901
    elif case == "other card":
        v_pan = other_pan
    elif case == "other terminal":
        voider = world.iso(index=1)
    balances = world.balance(idx), world.balance(other_idx)
    (v,) = voider.send(voider.void(v_pan, amount, orig))
    assert v["39"] == "25"
    assert (world.balance(idx), world.balance(other_idx)) == balances


@pytest.mark.parametrize("days", [1, 255, 256])
def test_void_of_an_earlier_days_purchase_is_12(world, days):
    """A void is for today's purchases only, however long ago the purchase was (a rarely
    used terminal still holds it among its last requests)."""
    t = world.iso()
    pan, idx = funded_card(world)
    world.state.cards["expiry_yymm"][idx] = 9912
    t.send(t.purchase(pan, 400, stan="000410"))
    after_purchase = world.balance(idx)
    world.engine.clock_offset_us += days * DAY_US
    assert t.signon()["39"] == "00"          # 日切: the next settlement date, a new session
    (v,) = t.send(t.void(pan, 400, "000410"))
    assert v["39"] == "12"
    assert world.balance(idx) == after_purchase


def test_void_in_another_currency_than_the_purchase_is_25(fx_world):
    world = fx_world
    t = world.iso(81)
    pan, idx = funded_card(world, 44)
    t.send(t.purchase(pan, 10_000, stan="000420", extra={"49": HKD}))
    after_purchase = world.balance(idx)
    (v,) = t.send(t.void(pan, 10_000, "000420", currency="156"))   # CNY 100.00, not HKD
    assert v["39"] == "25"
    assert world.balance(idx) == after_purchase


def test_retransmitted_void_gets_the_original_answer_without_a_second_credit(world):
    t = world.iso()
    pan, idx = funded_card(world)
    before = world.balance(idx)
    t.send(t.purchase(pan, 1_100, stan="000500"))
    request = t.void(pan, 1_100, "000500", stan="000501")
    (first,) = t.send(request)
    (again,) = t.send(request)
    assert first["39"] == again["39"] == "00"
    assert (again["37"], again["38"], again["6"]) == (first["37"], first["38"], first["6"])
    assert world.balance(idx) == before


def test_reversal_of_a_void_debits_again_once_and_the_purchase_can_be_voided_again(world):
    t = world.iso()
    pan, idx = funded_card(world)
    before = world.balance(idx)
    t.send(t.purchase(pan, 1_600, stan="000600"))
    (v,) = t.send(t.void(pan, 1_600, "000600", stan="000601"))
    assert v["39"] == "00" and world.balance(idx) == before
    (r1, r2) = t.send(t.void_reversal(pan, 1_600, "000601"),
                      t.void_reversal(pan, 1_600, "000601"))
    assert r1["t"] == "0410" and r1["39"] == r2["39"] == "00"
    assert world.balance(idx) == before - 1_600          # the void undone, once
    (retry,) = t.send(t.void(pan, 1_600, "000600", stan="000601"))
    assert retry["39"] == "94"                           # a reversed void is never repeated
    assert world.balance(idx) == before - 1_600
    (again,) = t.send(t.void(pan, 1_600, "000600", stan="000602"))
    assert again["39"] == "00" and world.balance(idx) == before


def test_reversal_of_a_void_the_switch_never_saw_blocks_the_late_void(world):
    t = world.iso()
    pan, idx = funded_card(world)
    t.send(t.purchase(pan, 600, stan="000650"))
    after_purchase = world.balance(idx)
    (r,) = t.send(t.void_reversal(pan, 600, "000651"))
    (late,) = t.send(t.void(pan, 600, "000650", stan="000651"))
    assert (r["39"], late["39"]) == ("00", "94")
    assert world.balance(idx) == after_purchase
    (v,) = t.send(t.void(pan, 600, "000650", stan="000652"))   # the purchase still stands
    assert v["39"] == "00" and world.balance(idx) == after_purchase + 600


def test_reversal_of_a_voided_purchase_gives_no_second_refund(world):
    t = world.iso()
    pan, idx = funded_card(world)
    before = world.balance(idx)
    t.send(t.purchase(pan, 800, stan="000700"))
    t.send(t.void(pan, 800, "000700", stan="000701"))
    (r,) = t.send(t.reversal(pan, 800, "000700"))
    assert r["39"] == "00"
    assert world.balance(idx) == before


def test_reversal_of_yesterdays_purchase_does_not_free_todays_limit(world):
    """Only today's spending counts against today's limit: giving back yesterday's purchase
    (a late reversal after midnight) must not make room for more spending today."""
    t = world.iso()
    pan, idx = funded_card(world, balance=10_000_000)
    pin_clock(world, dt.datetime(2031, 5, 20, 23, 0, tzinfo=CST))
    world.state.cards["expiry_yymm"][idx] = 9912
    assert t.signon()["39"] == "00"          # each settlement date its session (日切)
    (p,) = t.send(t.purchase(pan, 400_000, stan="000900"))
    pin_clock(world, dt.datetime(2031, 5, 21, 10, 0, tzinfo=CST))
    (today,) = t.send(t.purchase(pan, 500_000))         # 23:00 was already the 21st's
    (rev,) = t.send(t.reversal(pan, 400_000, "000900"))
    assert (p["39"], today["39"], rev["39"]) == ("00", "00", "00")
    (more,) = t.send(t.purchase(pan, 100_000))
    assert more["39"] == "61"
    assert world.balance(idx) == 10_000_000 - 500_000


@pytest.mark.parametrize(("mti", "fields", "missing"), [
    ("0200", {"3": "200000", "4": "000000000100"}, "M61"), ("0500", {"60": "00000001201"}, "M48")])
def test_void_and_settlement_without_their_data_field_are_30(world, mti, fields, missing):
    t = world.iso()
    pan, idx = funded_card(world)
    (r,) = t.send(t.build(mti, {"2": pan, "11": "000950", **fields}))
    assert (r["39"], r["44"]) == ("30", missing) and world.balance(idx) == 1_000_000


# ---- settlement (0500) -----------------------------------------------------------------------

def batch_of_activity(world, t: IsoTerminal) -> None:
    """Purchases 100, 200, 300 and 400; the 200 voided, the 300 reversed, the 400 voided and
    the void reversed; a declined purchase, a refused void (and its reversal) and a balance
    inquiry (no money):
    debits 1000 - 300 = 700 in 3, credits 200 + 400 - 400 = 200 in 1."""
    pan, _ = funded_card(world)
    poor, _ = funded_card(world, nth=1, balance=10)
    replies = t.send(t.purchase(pan, 100), t.purchase(pan, 200, stan="000900"),
                     t.purchase(pan, 300, stan="000901"), t.purchase(pan, 400, stan="000902"),
                     t.void(pan, 200, "000900"), t.reversal(pan, 300, "000901"),
                     t.void(pan, 400, "000902", stan="000903"),
                     t.void_reversal(pan, 400, "000903"), t.purchase(poor, 500),
                     t.void(pan, 300, "000901", stan="000904"),
                     t.void_reversal(pan, 300, "000904"), t.balance(pan))
    assert [r["39"] for r in replies] == ["00"] * 8 + ["51", "25", "00", "00"]


def test_settlement_with_matching_totals_is_balanced(world):
    t = world.iso()
    other = world.iso(index=1)
    batch_of_activity(world, t)
    pan, _ = funded_card(world, nth=2)
    other.send(other.purchase(pan, 5_000))               # another terminal's batch
    (s,) = t.send(t.settlement(700, 3, 200, 1))
    assert s["t"] == "0510" and s["39"] == "00"
    assert s["48"] == "000000000700" "000003" "000000000200" "000001" "1"
    assert t.verify_reply_mac(s)


def test_settlement_with_other_totals_is_unbalanced_and_shows_the_switchs(world):
    t = world.iso()
    batch_of_activity(world, t)
    (s,) = t.send(t.settlement(700, 3, 0, 0))
    assert s["39"] == "00"
    assert s["48"] == "000000000700" "000003" "000000000200" "000001" "2"


@pytest.mark.parametrize("first_balanced", [True, False])
def test_settlement_starts_the_next_batch_from_zero(world, first_balanced):
    t = world.iso()
    batch_of_activity(world, t)
    totals = (700, 3, 200, 1) if first_balanced else (1, 1, 1, 1)
    (s1,) = t.send(t.settlement(*totals))
    assert s1["48"][-1] == ("1" if first_balanced else "2")
    pan, _ = funded_card(world, nth=3)
    (p,) = t.send(t.purchase(pan, 150))
    assert p["39"] == "00"
    (s2,) = t.send(t.settlement(150, 1, 0, 0, batch=2))
    assert s2["48"] == "000000000150" "000001" "000000000000" "000000" "1"
    (s3,) = t.send(t.settlement(150, 1, 0, 0, batch=3))
    assert s3["48"] == "0" * 36 + "2"                    # nothing since the last settlement
    (s4,) = t.send(t.settlement(0, 0, 0, 0, batch=4))
    assert s4["48"] == "0" * 36 + "1"


def test_retransmitted_settlement_gets_the_original_answer_and_closes_nothing(world):
    t = world.iso()
    batch_of_activity(world, t)
    request = t.settlement(700, 3, 200, 1)
    (first,) = t.send(request)
    pan, _ = funded_card(world, nth=3)
    t.send(t.purchase(pan, 50))
    (again,) = t.send(request)
    assert again["39"] == "00" and again["48"] == first["48"]
    (nxt,) = t.send(t.settlement(50, 1, 0, 0, batch=2))
    assert nxt["48"] == "000000000050" "000001" "000000000000" "000000" "1"


# ---- canteen meal discounts by age tier ------------------------------------------------------

@pytest.mark.parametrize(("tier", "age", "price", "charged"), [
    ("A", 30, 1_240, 1_240), ("A", 62, 1_240, 1_116), ("A", 75, 1_240, 992),
    ("A", 85, 1_240, 868), ("A", 92, 1_240, 620), ("A", 75, 1_237, 990),
    ("B", 30, 1_240, 1_240), ("B", 62, 1_240, 1_240), ("B", 70, 1_240, 1_054),
    ("B", 85, 1_240, 744), ("B", 70, 1_235, 1_050),
])
def test_canteen_charges_the_operators_tier_price(world, tier, age, price, charged):
    t = canteen(world, tier)
    pan, idx = funded_card(world)
    set_age(world, idx, age)
    before = world.balance(idx)
    (r,) = t.send(t.purchase(pan, price))
    assert r["39"] == "00"
    assert r["4"] == f"{price:012d}"                     # the menu price, as asked
    assert r["6"] == f"{charged:012d}" and r["51"] == "156"
    assert t.verify_reply_mac(r)
    assert world.balance(idx) == before - charged


def test_old_holder_pays_less_than_young_one_for_the_same_meal(world):
    t, shop = canteen(world, "A"), world.iso()
    young, y_idx = funded_card(world)
    old, o_idx = funded_card(world, nth=1)
    set_age(world, y_idx, 40)
    set_age(world, o_idx, 81)
    (a, b) = t.send(t.purchase(young, 2_000), t.purchase(old, 2_000))
    (c,) = shop.send(shop.purchase(old, 2_000))         # no age discount at a supermarket
    assert (a["6"], b["6"], c["6"]) == ("000000002000", "000000001400", "000000002000")
    assert (world.balance(y_idx), world.balance(o_idx)) == (1_000_000 - 2_000,
                                                            1_000_000 - 1_400 - 2_000)


@pytest.mark.parametrize(("born", "charged"), [
    (dt.date(1961, 5, 20), 992),       # 70 today: the 70+ tier (80%) from the birthday on
    (dt.date(1961, 5, 21), 1_116),     # 70 tomorrow: still 69, the 60+ tier (90%)
])
def test_canteen_tier_changes_on_the_birthday(world, born, charged):
    pin_clock(world, dt.datetime(2031, 5, 20, 12, 0, tzinfo=CST))
    t = canteen(world, "A")
    pan, idx = funded_card(world)
    world.state.cards["expiry_yymm"][idx] = 9912
    account = world.state.cards["account"][idx]
    world.state.accounts["birth_day"][account] = (born - dt.date(1900, 1, 1)).days
    (r,) = t.send(t.purchase(pan, 1_240))
    assert r["39"] == "00" and r["6"] == f"{charged:012d}"


def test_void_of_a_canteen_meal_refunds_what_was_charged(world):
    t = canteen(world, "A")
    pan, idx = funded_card(world)
    set_age(world, idx, 75)
    before = world.balance(idx)
    (p,) = t.send(t.purchase(pan, 1_240, stan="001000"))
    (v,) = t.send(t.void(pan, 1_240, "001000"))
    assert (p["6"], v["39"], v["6"]) == ("000000000992", "00", "000000000992")
    assert world.balance(idx) == before


def test_canteen_accepts_only_its_own_provinces_cards(world):
    t = canteen(world, "A")
    jiangsu, idx = funded_card(world, 32)
    before = world.balance(idx)
    (r,) = t.send(t.purchase(jiangsu, 1_000))
    assert r["39"] == "62" and world.balance(idx) == before


# ---- per-card daily limit per application ----------------------------------------------------

def test_canteen_daily_limit_per_card_is_61(world):
    t = canteen(world, "B")
    pan, idx = funded_card(world)
    set_age(world, idx, 30)                              # full price: charged = asked
    (a, b) = t.send(t.purchase(pan, 6_000), t.purchase(pan, 4_001))
    assert (a["39"], b["39"]) == ("00", "61") and "6" not in b
    after = world.balance(idx)
    (c,) = t.send(t.purchase(pan, 4_000))                # exactly the 10 000 fen limit
    assert c["39"] == "00" and world.balance(idx) == after - 4_000
    (d,) = t.send(t.purchase(pan, 1))
    assert d["39"] == "61"


def test_canteen_limit_is_per_card_and_per_application(world):
    t = canteen(world, "A")
    shop = world.iso()
    pan, idx = funded_card(world)
    other, _ = funded_card(world, nth=1)
    set_age(world, idx, 30)
    (a, b) = t.send(t.purchase(pan, 10_000), t.purchase(other, 10_000))
    (c,) = shop.send(shop.purchase(pan, 20_000))         # another application: its own limit
    (d,) = t.send(t.purchase(pan, 1))
    assert (a["39"], b["39"], c["39"], d["39"]) == ("00", "00", "00", "61")


def test_canteen_limit_starts_again_the_next_day_and_after_a_void(world):
    t = canteen(world, "A")
    pan, idx = funded_card(world)
    set_age(world, idx, 30)
    (a,) = t.send(t.purchase(pan, 10_000, stan="001100"))
    (v,) = t.send(t.void(pan, 10_000, "001100"))
    (b,) = t.send(t.purchase(pan, 10_000))
    assert (a["39"], v["39"], b["39"]) == ("00", "00", "00")
    world.engine.clock_offset_us += DAY_US
    assert t.signon()["39"] == "00"          # 日切: the next settlement date, a new session
    (c,) = t.send(t.purchase(pan, 10_000))
    assert c["39"] == "00"


# ---- Hong Kong and Macao acquiring -----------------------------------------------------------

@pytest.mark.parametrize(("province", "currency", "minor", "fen"), [
    (81, HKD, 10_000, 9_150),          # HKD 100.00 at 91.50 CNY per 100 HKD
    (81, HKD, 1_234, 1_129),           # 1129.11 fen, to the nearest fen
    (81, HKD, 100, 92),                # 91.5 fen: half-up
    (82, MOP, 10_000, 8_880),
    (82, MOP, 1_234, 1_096),           # 1095.79 fen
])
def test_cross_border_pos_converts_to_fen_and_journals_both(fx_world, province, currency,
                                                           minor, fen):
    world = fx_world
    t = world.iso(province)
    pan, idx = funded_card(world, 44)
    before = world.balance(idx)
    world.engine.journal.take()
    (r,) = t.send(t.purchase(pan, minor, extra={"49": currency}))
    assert r["39"] == "00"
    assert (r["4"], r["49"], r["6"], r["51"]) == (f"{minor:012d}", currency, f"{fen:012d}", "156")
    assert t.verify_reply_mac(r)
    assert world.balance(idx) == before - fen
    (rec,) = view(unpack(world.engine.journal.take()[1]), "payment")
    assert (rec["kind"], rec["card"], rec["amount_fen"]) == (KIND_PURCHASE, idx, fen)
    assert (rec["currency"], rec["amount_asked_minor"]) == (int(currency), minor)


@pytest.mark.parametrize("province", [81, 82])
@pytest.mark.parametrize("card_province", [11, 12, 13, 31, 32, 33, 34])
def test_cross_border_pos_refuses_other_provinces_cards(fx_world, province, card_province):
    world = fx_world
    t = world.iso(province)
    pan, idx = funded_card(world, card_province)
    before = world.balance(idx)
    (r,) = t.send(t.purchase(pan, 1_000, extra={"49": HKD if province == 81 else MOP}))
    assert r["39"] == "62" and world.balance(idx) == before


@pytest.mark.parametrize(("province", "currency"), [(31, HKD), (44, HKD), (44, MOP), (11, MOP),
                                                    (81, USD), (82, USD)])
def test_currency_without_an_arrangement_is_13(fx_world, province, currency):
    world = fx_world
    t = world.iso(province)
    pan, idx = funded_card(world, 44 if province in (44, 81, 82) else province)
    before = world.balance(idx)
    (r,) = t.send(t.purchase(pan, 1_000, extra={"49": currency}))
    assert r["39"] == "13" and world.balance(idx) == before


def test_retransmission_in_another_currency_is_94(fx_world):
    """Same STAN, same digits in field 4, but CNY instead of HKD: another request, never
    answered with the HKD purchase's approval."""
    world = fx_world
    t = world.iso(81)
    pan, idx = funded_card(world, 44)
    (first,) = t.send(t.purchase(pan, 10_000, stan="001300", extra={"49": HKD}))
    (other,) = t.send(t.purchase(pan, 10_000, stan="001300", extra={"49": "156"}))
    assert (first["39"], other["39"]) == ("00", "94")
    assert "6" not in other
    assert world.balance(idx) == 1_000_000 - 9_150


def test_daily_limit_counts_converted_fen(fx_world):
    world = fx_world
    t = world.iso(81)
    pan, idx = funded_card(world, 44, balance=10_000_000)
    (a, b) = t.send(t.purchase(pan, 546_448, extra={"49": HKD}),       # exactly 500 000 fen
                    t.purchase(pan, 1, extra={"49": HKD}))
    assert (a["39"], a["6"], b["39"]) == ("00", "000000500000", "61")
    assert world.balance(idx) == 10_000_000 - 500_000


# ---- cross-region acceptance -----------------------------------------------------------------

@pytest.mark.parametrize(("terminal_province", "accepted"), [
    (31, {31, 32, 33, 34}), (33, {31, 32, 33, 34}),          # Yangtze River Delta
    (11, {11, 12, 13}), (13, {11, 12, 13}),                  # Beijing-Tianjin-Hebei
    (44, {44}),
])
def test_supermarket_accepts_its_region_groups_cards(world, terminal_province, accepted):
    t = world.iso(terminal_province)
    for card_province in (11, 12, 13, 31, 32, 33, 34, 44):
        pan, idx = funded_card(world, card_province)
        before = world.balance(idx)
        (r,) = t.send(t.purchase(pan, 321))
        ok = card_province in accepted
        assert r["39"] == ("00" if ok else "62"), card_province
        assert world.balance(idx) == before - (321 if ok else 0)


def hmt_card(world) -> tuple[str, int]:
    pan, idx = funded_card(world, 44, flags=lambda f: (f & HOLDER_HMT) != 0)
    _, id_number = world.holder(idx)
    assert id_number[:2] in ("81", "82", "83")           # a Hong Kong/Macao/Taiwan permit
    return pan, idx


def test_hong_kong_macao_taiwan_residents_pay_like_locals(fx_world):
    world = fx_world
    hmt, h_idx = hmt_card(world)
    local, l_idx = funded_card(world, 44, flags=lambda f: (f & HOLDER_HMT) == 0)
    set_age(world, h_idx, 75)
    set_age(world, l_idx, 75)
    places = [(world.iso(44), {}), (canteen(world, "A", 44), {}),
              (world.iso(81), {"49": HKD}), (world.iso(31), {})]
    for pan, idx in ((hmt, h_idx), (local, l_idx)):
        before = world.balance(idx)
        answers = [t.send(t.purchase(pan, 1_240, extra=extra))[0] for t, extra in places]
        assert [r["39"] for r in answers] == ["00", "00", "00", "62"]
        assert [r.get("6") for r in answers] == [
            "000000001240", "000000000992", "000000001135", None]
        assert world.balance(idx) == before - 1_240 - 992 - 1_135
        gz = places[0][0]
        (v,) = gz.send(gz.void(pan, 1_240, answers[0]["11"]))
        assert v["39"] == "00" and world.balance(idx) == before - 992 - 1_135


# ---- over TCP, to a real switch process ------------------------------------------------------

@pytest.mark.slow
@ON_BOTH_STORES
def test_hong_kong_pos_over_tcp(running_switch, world):
    """The switch as deployed (default configuration, real sockets, group commit): HKD
    converted at the configured rate, other provinces refused, the durable journal row
    carrying both amounts, then a void and a balanced settlement."""
    sock, exchange = socket_exchange("127.0.0.1", running_switch.iso, 2)
    t = IsoTerminal(world.terminal(TERM_POS, 81), exchange)
    assert t.signon()["39"] == "00"
    gd, _ = world.card(44)
    sh, _ = world.card(31)
    (b0,) = t.send(t.balance(gd))
    (paid, refused) = t.send(t.purchase(gd, 20_000, stan="000100", extra={"49": HKD}),
                             t.purchase(sh, 20_000, extra={"49": HKD}))
    (b1,) = t.send(t.balance(gd))
    assert (paid["39"], paid["6"], paid["49"], refused["39"]) == (
        "00", "000000018300", HKD, "62")
    assert t.verify_reply_mac(paid)
    assert int(b0["54"][8:]) - int(b1["54"][8:]) == 18_300
    (v,) = t.send(t.void(gd, 20_000, "000100", currency=HKD))
    (again,) = t.send(t.purchase(gd, 10_000, extra={"49": HKD}))
    (s,) = t.send(t.settlement(18_300 + 9_150, 2, 18_300, 1))
    (b2,) = t.send(t.balance(gd))
    sock.close()
    assert (v["39"], v["6"], again["39"]) == ("00", "000000018300", "00")
    assert s["39"] == "00" and s["48"] == "000000027450" "000002" "000000018300" "000001" "1"
    assert int(b0["54"][8:]) - int(b2["54"][8:]) == 9_150
    recs, numbers, _ = committed_journal(running_switch.data_dir)
    (i,) = np.flatnonzero(numbers == int(paid["37"]))            # the RRN names the record
    assert (recs["kind"][i], recs["seq"][i], recs["rc"][i]) == (KIND_PURCHASE, 100,
                                                                CODE_INDEX["00"])
    assert recs["amount_fen"][i] == 18_300
    asked = view(recs[i:i + 1], "payment")
    assert (asked["currency"][0], asked["amount_asked_minor"][0]) == (344, 20_000)
    (j,) = np.flatnonzero(numbers == int(v["37"]))
    assert recs["kind"][j] == KIND_VOID and recs["amount_fen"][j] == 18_300


@pytest.mark.slow
@ON_BOTH_STORES
def test_batch_and_void_survive_a_kill9_restart(switch_dir, world):
    """A terminal keeps working across a switch crash: the purchase made before it can be
    voided after it, its retry gets the original answer, and the batch settles balanced."""
    sw = start_switch(switch_dir)
    try:
        sock, exchange = socket_exchange("127.0.0.1", sw.iso, 2)
        t = IsoTerminal(world.terminal(TERM_POS, 31, 2), exchange)
        assert t.signon()["39"] == "00"
        pan, _ = world.card(31)
        request = t.purchase(pan, 2_000, stan="000100")
        (p, q) = t.send(request, t.purchase(pan, 700, stan="000101"))
        assert (p["39"], q["39"]) == ("00", "00")
        sock.close()
        sw.kill9()
        sw = start_switch(switch_dir)
        sock, t.exchange = socket_exchange("127.0.0.1", sw.iso, 2)
        (again,) = t.send(request)                        # the working key survived too
        (v,) = t.send(t.void(pan, 2_000, "000100", stan="000102"))
        (s,) = t.send(t.settlement(2_700, 2, 2_000, 1))
        sock.close()
        assert (again["39"], again["37"]) == ("00", p["37"])
        assert (v["39"], v["6"]) == ("00", "000000002000")
        assert s["48"] == "000000002700" "000002" "000000002000" "000001" "1"
    finally:
        sw.stop()
