"""Authorisation rules through the compiled paths (Engine.process), ISO 8583 requests built
with pyiso8583, in SPEC §4 order, each decline with its code and without effect."""

import numpy as np
import pytest

from onecard.core.state import (
    CARD_CANCELLED,
    CARD_FROZEN,
    CARD_LOST,
    FN_TRANSPORT,
    TERM_METRO_GATE,
)

from termsim import iso_decode, iso_encode


def test_signon_gives_working_keys(world):
    t = world.iso(signon=False)
    reply = t.signon()
    assert reply["t"] == "0810" and reply["39"] == "00"
    assert len(bytes.fromhex(reply["62"])) == 40         # PIK, check value, MAK, check value
    assert reply["41"] == t.info.tid


def test_purchase_approved_debits_and_replies_fully(world):
    t = world.iso()
    pan, idx = world.card()
    before = world.balance(idx)
    (r,) = t.send(t.purchase(pan, 1234))
    assert r["t"] == "0210" and r["39"] == "00"
    assert r["2"] == pan and r["4"] == "000000001234" and r["11"] == "000002"
    assert len(r["37"]) == 12 and len(r["38"]) == 6
    assert t.verify_reply_mac(r)
    assert world.balance(idx) == before - 1234
    assert world.engine.journal.pending == 2             # sign-on and the purchase


def test_balance_inquiry_returns_field_54(world):
    t = world.iso()
    pan, idx = world.card()
    (r,) = t.send(t.balance(pan))
    assert r["39"] == "00"
    assert r["54"] == f"1002156C{world.balance(idx):012d}"


def test_unknown_terminal_is_03(world):
    t = world.iso(signon=False)
    t.info = type(t.info)(**{**t.info.__dict__, "tid": "X9999999"})
    (r,) = t.send(t.build("0800", {"11": "000001", "60": "00000001003"}, mac=False))
    assert r["39"] == "03"


def test_wrong_merchant_is_03(world):
    t = world.iso()
    pan, _ = world.card()
    (r,) = t.send(t.purchase(pan, 100, extra={"42": "999999999999999"}))
    assert r["39"] == "03"


def test_bad_mac_is_a0_and_changes_nothing(world):
    t = world.iso()
    pan, idx = world.card()
    before = world.balance(idx)
    (r,) = t.send(t.build("0200", {"2": pan, "3": "000000", "4": "000000000100",
                                   "11": "000010", "49": "156"}, mak=b"\x11" * 16))
    assert r["39"] == "A0" and "64" not in r
    assert world.balance(idx) == before
    assert world.engine.journal.pending == 1             # only the sign-on


def test_not_signed_on_is_a0(world):
    t = world.iso(signon=False)
    t.mak = b"\x22" * 16
    pan, _ = world.card()
    (r,) = t.send(t.purchase(pan, 100))
    assert r["39"] == "A0"


def test_terminal_not_permitted_is_58(world):
    gate = world.terminal(TERM_METRO_GATE)
    t = world.iso()
    t.info = gate                                        # a native gate speaking ISO 8583
    t.mak = b"\x00" * 16
    (r,) = t.send(t.build("0800", {"11": "000001", "42": gate.merchant, "60": "00000001003"},
                          mac=False))
    assert r["39"] == "58"


@pytest.mark.parametrize(("status", "code"), [(CARD_LOST, "41"), (CARD_FROZEN, "05"),
                                              (CARD_CANCELLED, "14")])
def test_card_status_codes(world, status, code):
    t = world.iso()
    pan, idx = world.card()
    world.state.cards["status"][idx] = status
    before = world.balance(idx)
    (r,) = t.send(t.purchase(pan, 100))
    assert r["39"] == code
    assert world.balance(idx) == before


def test_unknown_card_is_14(world):
    t = world.iso()
    (r,) = t.send(t.purchase("6213119999999999999", 100))
    assert r["39"] == "14"


def test_expired_card_is_33(world):
    t = world.iso()
    pan, idx = world.card()
    world.state.cards["expiry_yymm"][idx] = 2001
    (r,) = t.send(t.purchase(pan, 100))
    assert r["39"] == "33"


def test_function_not_loaded_is_57(world):
    t = world.iso()
    pan, idx = world.card()
    world.state.cards["functions"][idx] = FN_TRANSPORT    # no financial function
    (r,) = t.send(t.purchase(pan, 100))
    assert r["39"] == "57"


def test_region_group_acceptance(world):
    shanghai_pos = world.iso(31)
    jiangsu, _ = world.card(32)                          # YRD card in Shanghai: accepted
    beijing, _ = world.card(11)                          # JJJ card in Shanghai: refused
    guangdong, _ = world.card(44)
    (a, b, c) = shanghai_pos.send(shanghai_pos.purchase(jiangsu, 100),
                                  shanghai_pos.purchase(beijing, 100),
                                  shanghai_pos.purchase(guangdong, 100))
    assert (a["39"], b["39"], c["39"]) == ("00", "62", "62")
    hebei_pos = world.iso(13)
    (d,) = hebei_pos.send(hebei_pos.purchase(beijing, 100))
    assert d["39"] == "00"


def test_cross_border_guangdong_cards_at_hong_kong(world):
    hk = world.iso(81)
    gd, _ = world.card(44)
    sh, _ = world.card(31)
    (a, b) = hk.send(hk.purchase(gd, 100), hk.purchase(sh, 100))
    assert (a["39"], b["39"]) == ("00", "62")


def test_amount_and_currency_are_checked(world):
    t = world.iso()
    pan, _ = world.card()
    (a, b) = t.send(t.purchase(pan, 0), t.purchase(pan, 100, extra={"49": "840"}))
    assert (a["39"], b["39"]) == ("13", "13")


def test_daily_limit_is_61_and_resets_next_day(world):
    t = world.iso()
    pan, idx = world.card(min_balance=1_000_000)
    world.set_balance(idx, 10_000_000)
    (a, b) = t.send(t.purchase(pan, 400_000), t.purchase(pan, 100_001))
    assert (a["39"], b["39"]) == ("00", "61")
    world.engine.clock_offset_us = 86_400 * 1_000_000
    assert t.signon()["39"] == "00"          # 日切: the next settlement date, a new session
    (c,) = t.send(t.purchase(pan, 100_001))
    assert c["39"] == "00"


def test_insufficient_funds_is_51(world):
    t = world.iso()
    pan, idx = world.card()
    world.set_balance(idx, 99)
    (r,) = t.send(t.purchase(pan, 100))
    assert r["39"] == "51" and world.balance(idx) == 99


def test_duplicate_gets_original_reply_without_second_debit(world):
    t = world.iso()
    pan, idx = world.card()
    before = world.balance(idx)
    request = t.purchase(pan, 500)
    (first,) = t.send(request)
    world.state.cards["status"][idx] = CARD_LOST          # reported lost since: retry unaffected
    (again,) = t.send(request)
    assert first["39"] == again["39"] == "00"
    assert first["37"] == again["37"] and first["38"] == again["38"]
    assert world.balance(idx) == before - 500


def test_same_stan_different_request_is_94(world):
    t = world.iso()
    pan, idx = world.card()
    before = world.balance(idx)
    (a, b) = t.send(t.purchase(pan, 500, stan="000777"), t.purchase(pan, 600, stan="000777"))
    assert (a["39"], b["39"]) == ("00", "94")
    assert world.balance(idx) == before - 500


def test_reversal_restores_once(world):
    t = world.iso()
    pan, idx = world.card()
    before = world.balance(idx)
    (p,) = t.send(t.purchase(pan, 800, stan="000500"))
    assert p["39"] == "00" and world.balance(idx) == before - 800
    (r1, r2) = t.send(t.reversal(pan, 800, "000500"), t.reversal(pan, 800, "000500"))
    assert r1["t"] == "0410" and r1["39"] == r2["39"] == "00"
    assert world.balance(idx) == before
    (retry,) = t.send(t.purchase(pan, 800, stan="000500"))
    assert retry["39"] == "94"                           # never repeat a reversed approval
    assert world.balance(idx) == before


def test_reversal_of_unknown_original_is_acknowledged_and_blocks_it(world):
    t = world.iso()
    pan, idx = world.card()
    before = world.balance(idx)
    (r,) = t.send(t.reversal(pan, 300, "000900"))
    assert r["39"] == "00" and world.balance(idx) == before
    (late,) = t.send(t.purchase(pan, 300, stan="000900"))
    assert late["39"] == "94" and world.balance(idx) == before


def test_reversal_with_other_details_is_25(world):
    t = world.iso()
    pan, idx = world.card()
    (p,) = t.send(t.purchase(pan, 800, stan="000501"))
    after_purchase = world.balance(idx)
    (r,) = t.send(t.reversal(pan, 700, "000501"))
    assert p["39"] == "00" and r["39"] == "25"
    assert world.balance(idx) == after_purchase


def test_reversal_frees_daily_limit(world):
    t = world.iso()
    pan, idx = world.card()
    world.set_balance(idx, 10_000_000)
    t.send(t.purchase(pan, 500_000, stan="000600"))
    t.send(t.reversal(pan, 500_000, "000600"))
    (again,) = t.send(t.purchase(pan, 500_000))
    assert again["39"] == "00"


def test_echo_and_unsupported_transactions(world):
    t = world.iso()
    (echo, other, proc) = t.send(
        t.build("0820", {"11": "000003"}, mac=False),
        t.build("0300", {"11": "000004"}),
        t.build("0200", {"2": "6213111234567890", "3": "400000", "4": "000000000100",
                         "11": "000005"}))
    assert echo["t"] == "0830" and echo["39"] == "00"
    assert other["39"] == "12"
    assert proc["39"] == "12"


def test_unknown_message_with_almost_no_fields_is_12(world):
    t = world.iso()
    (r,) = t.send(iso_encode({"h": t.header, "t": "0300", "3": "000000"}))
    assert r["t"] == "0310" and r["39"] == "12" and "11" not in r and "41" not in r


def test_missing_mandatory_field_is_30_naming_it(world):
    t = world.iso()
    (r,) = t.send(t.build("0200", {"3": "000000", "4": "000000000100", "11": "000006"}))
    assert r["39"] == "30" and r["44"] == "M2"


def test_undecodable_message_is_30_and_the_rest_of_the_batch_goes_on(world):
    t = world.iso()
    pan, _ = world.card()
    good = t.purchase(pan, 100)
    bad = bytearray(t.purchase(pan, 100))
    bad[2 + 21] = 0xAB                                   # PAN length byte is not BCD
    replies = world.exchange(0)(bytes(bad) + good)
    from termsim import frames
    first, second = (iso_decode(f) for f in frames(replies, 2))
    assert first["39"] == "30" and first["44"] == "F2"
    assert second["39"] == "00"


def test_journal_records_are_after_images(world):
    t = world.iso()
    pan, idx = world.card()
    t.send(t.purchase(pan, 250))
    first, blob = world.engine.journal.take()
    from onecard.core.journal import unpack
    recs = unpack(blob)
    purchase = recs[-1]
    assert purchase["amount_fen"] == 250 and purchase["card"] == idx
    assert purchase["balance_fen_after"] == world.balance(idx)
    assert first == 0 and len(recs) == 2
    assert np.all(recs["ts_us"] > 0)
