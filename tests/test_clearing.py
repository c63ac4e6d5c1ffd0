"""Clearing's net positions (issue 16, protocols/CLEARING.md): each kind's legs, fees, the
cut-over, and sum of net positions = 0 to the fen for seeded random days of every kind."""

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from onecard.protocols import clearing
from onecard.protocols.codes import CODE_INDEX
from onecard.protocols.journal import KIND_BY_NAME, NONE
from onecard.protocols.journal_codec import DTYPES, RECORD_DTYPE, view
from onecard.switch import cli
from onecard.switch.clearing import files
from onecard.switch.clearing.positions import Reference, legs, positions

CST = clearing.CST
DAY = dt.date(2026, 11, 30)
NOON_US = int(dt.datetime(2026, 11, 30, 12, 0, tzinfo=CST).timestamp() * 1e6)
REF = Reference(card_province=np.array([31, 32, 81]),
                card_region=np.array([310000, 320100, 810000]),
                terminal_acquirer=["SHOP-1", "SHMETRO", "HOSPITAL-1", "KIOSK-OP"],
                app_codes=["FIN-PAY", "TRN-METRO", "MED-SETTLE", "TRN-TOPUP"],
                programme_codes=["PENSION"])
SHOP, METRO, HOSPITAL, KIOSK = range(4)


def rec(kind: str, amount_fen: int, *, card: int = 0, terminal: int = SHOP, app: int = 0,
        ts_us: int = NOON_US, rc: str = "00", pool: int = 0, personal: int = 0,
        programme: int = 0, direction: int = clearing.ADJUST_OWED) -> np.ndarray:
    layout = KIND_BY_NAME[kind].layout
    r = np.zeros(1, dtype=DTYPES[layout])
    r["kind"], r["amount_fen"], r["card"], r["app"] = KIND_BY_NAME[kind].value, amount_fen, \
        card, app
    r["terminal"] = NONE if kind == "CREDIT" else terminal
    r["ts_us"], r["rc"] = ts_us, CODE_INDEX[rc]
    if layout == "payment":                       # as the terminal asked it, in CNY
        r["amount_asked_minor"], r["currency"] = amount_fen, 156
    if layout == "medical":
        r["pool_fen"], r["personal_fen"] = pool, personal
    if layout == "credit":
        r["programme"] = programme
    if layout == "adjustment":
        r["direction"], r["account"] = direction, NONE
    return r.view(RECORD_DTYPE)


def day_of(*records, date: dt.date = DAY, **kw) -> dict[str, int]:
    recs = np.concatenate(records)
    d = positions(recs, np.arange(len(recs)), REF, date, **kw)
    nets = {p.party: p.net_fen for p in d.positions}
    assert sum(nets.values()) == 0
    return nets


def test_a_purchase_pays_its_acquirer_less_the_fee_and_its_issuer_owes_it():
    assert day_of(rec("PURCHASE", 10_000)) == {
        "issuer:31": -10_000, "acquirer:SHOP-1": 9_950, "scheme:onecard": 50}
    # the minimum fee on a small amount; no fee for a public service (metro)
    assert day_of(rec("PURCHASE", 10))["scheme:onecard"] == 1
    assert day_of(rec("TAP", 300, terminal=METRO, app=1, card=1)) == {
        "issuer:32": -300, "acquirer:SHMETRO": 300}


def test_a_reversal_after_the_cutover_nets_out_over_the_two_dates():
    before = int(dt.datetime(2026, 11, 30, 22, 59, 59, 999_999, tzinfo=CST).timestamp() * 1e6)
    after = before + 1                                        # 23:00:00: the next date
    records = (rec("PURCHASE", 10_000, ts_us=before), rec("REVERSAL", 10_000, ts_us=after))
    first, second = day_of(*records), day_of(*records, date=DAY + dt.timedelta(days=1))
    assert first == {"issuer:31": -10_000, "acquirer:SHOP-1": 9_950, "scheme:onecard": 50}
    assert second == {k: -v for k, v in first.items()}
    # with the cut-over at midnight both are of the same date and nothing is owed
    same = day_of(*records, cutover="00:00")
    assert set(same.values()) == {0}


def test_a_medical_bill_is_owed_to_the_institution_by_the_funds_and_the_cardholder():
    bill = rec("MEDICAL", 3_000, card=1, terminal=HOSPITAL, app=2, pool=5_000, personal=2_000)
    assert day_of(bill) == {"issuer:32": -3_000, "pool:320100": -5_000,
                            "personal:320100": -2_000, "acquirer:HOSPITAL-1": 10_000}
    refund = rec("MEDICAL_REFUND", 3_000, card=1, terminal=HOSPITAL, app=2, pool=5_000,
                 personal=2_000)
    assert set(day_of(bill, refund).values()) == {0}


def test_credits_are_owed_by_their_programme_or_the_counter_and_top_ups_by_the_kiosk():
    assert day_of(rec("CREDIT", 250_000, programme=1), rec("CREDIT", 5_000, card=2)) == {
        "issuer:31": 250_000, "programme:PENSION": -250_000, "issuer:81": 5_000,
        "deposit:81": -5_000}
    assert day_of(rec("TOPUP", 10_000, terminal=KIOSK, app=3)) == {
        "issuer:31": 10_000, "acquirer:KIOSK-OP": -10_000}


def test_an_adjustment_moves_money_between_issuer_and_acquirer_either_way_without_fee():
    assert day_of(rec("ADJUSTMENT", 700)) == {"issuer:31": -700, "acquirer:SHOP-1": 700}
    assert day_of(rec("ADJUSTMENT", 700, direction=clearing.ADJUST_OWES, card=1)) == {
        "issuer:32": 700, "acquirer:SHOP-1": -700}


def test_declined_records_and_other_dates_move_nothing():
    tomorrow = NOON_US + 86_400 * 1_000_000
    assert day_of(rec("PURCHASE", 10_000, rc="51"), rec("PURCHASE", 5, ts_us=tomorrow),
                  rec("BALANCE", 0)) == {}


def test_fees_are_configurable_per_application():
    fees = {"FIN-PAY": clearing.Fee(0, 0), "TRN-METRO": clearing.Fee(100, 5)}
    nets = day_of(rec("PURCHASE", 10_000), rec("TAP", 300, terminal=METRO, app=1), fees=fees)
    assert nets == {"issuer:31": -10_300, "acquirer:SHOP-1": 10_000, "acquirer:SHMETRO": 295,
                    "scheme:onecard": 5}


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_seeded_random_days_of_every_kind_net_to_zero_to_the_fen(seed):
    rng = np.random.default_rng(seed)
    kinds = list(clearing.LEGS)
    n = 5_000
    start = int(dt.datetime(2026, 11, 29, 0, 0, tzinfo=CST).timestamp() * 1e6)
    records = [rec(kinds[k], int(rng.integers(0, 10_000_000)), card=int(c),
                   terminal=int(t), app=int(rng.integers(0, 4)), ts_us=int(ts),
                   rc="00" if ok else "51", pool=int(rng.integers(0, 1_000_000)),
                   personal=int(rng.integers(0, 100_000)), programme=int(rng.integers(0, 2)),
                   direction=int(rng.integers(1, 3)))
               for k, c, t, ts, ok in zip(rng.integers(0, len(kinds), n),
                                          rng.integers(0, 3, n), rng.integers(0, 4, n),
                                          rng.integers(start, start + 3 * 86_400_000_000, n),
                                          rng.random(n) < 0.9, strict=True)]
    recs = np.concatenate(records)
    for offset in range(3):
        date = dt.date(2026, 11, 29) + dt.timedelta(days=offset)
        d = positions(recs, np.arange(n), REF, date)
        assert d.records > 0 and sum(p.net_fen for p in d.positions) == 0
        assert sum(p.credit_fen for p in d.positions) == sum(p.debit_fen for p in d.positions)
        # a pure function of the records: their order does not matter
        order = rng.permutation(n)
        assert positions(recs[order], order, REF, date) == d


def test_the_settlement_date_follows_the_cutover():
    at = [dt.datetime(2026, 11, 30, h, m, tzinfo=CST) for h, m in ((0, 0), (22, 59), (23, 0))]
    us = np.array([int(t.timestamp() * 1e6) for t in at])
    day = clearing.day_number(DAY)
    assert clearing.settlement_days(us, 23 * 60).tolist() == [day, day, day + 1]
    assert clearing.settlement_days(us, 0).tolist() == [day, day, day]
    for bad in ("23", "24:00", "7:5", "ab:cd"):
        with pytest.raises(ValueError):
            clearing.cutover_minutes(bad)


def unattributable_day() -> np.ndarray:
    """Records clearing cannot attribute, each for another reason, and one it can."""
    return np.concatenate([
        rec("PURCHASE", 100, card=NONE),                         # no card: 1 fen of fee
        rec("TAP", 300, card=1, terminal=99, app=1),              # a terminal not registered
        rec("CREDIT", 1_000, programme=5),                        # a programme not registered
        rec("PURCHASE", 200, card=50),                            # a card not registered
        rec("PURCHASE", 10_000)])


def test_records_clearing_cannot_attribute_are_held_by_the_suspense_party(tmp_path):
    from onecard.switch.clearing import exceptions

    recs = unattributable_day()
    assert day_of(recs) == {"issuer:31": -10_000 + 1_000, "issuer:32": -300,
                            "acquirer:SHOP-1": 99 + 199 + 9_950, "scheme:onecard": 1 + 1 + 50,
                            clearing.SUSPENSE: -100 + 300 - 1_000 - 200}
    nos = np.arange(500, 505)
    found = exceptions.find(recs, nos, FILE_REF, DAY)
    assert [(e.kind, e.reason, e.ref, e.status) for e in found] == [
        ("UNATTRIBUTED", reason, no, "open") for reason, no in (
            ("no_card", 500), ("unknown_terminal", 501), ("unknown_programme", 502),
            ("unknown_card", 503))]
    assert found[0].id == "20261130-UNATTRIBUTED-POS00001-500-0"
    assert found[1].id == "20261130-UNATTRIBUTED-T99-501-0"
    assert found[2].id == "20261130-UNATTRIBUTED-NONE-502-0"
    assert all(clearing.SUSPENSE in e.detail and e.detail.startswith(f"journal record {e.ref}")
               for e in found)
    # stable: the same journal in another order gives the same exceptions
    order = np.array([4, 2, 0, 3, 1])
    assert exceptions.find(recs[order], nos[order], FILE_REF, DAY) == found
    # the suspense party has its file, which agrees with its position
    day = legs(recs, nos, FILE_REF, DAY)
    files.write(files.render(day, FILE_REF, DAY, "23:00"), tmp_path, DAY)
    held = files.read(tmp_path / "20261130" / "suspense_onecard.csv")
    assert (held.net_fen, len(held.rows)) == (-1_000, 4)
    assert [r["terminal"] for r in held.rows] == ["POS00001", "", "", "POS00001"]


def test_an_empty_date_clears_to_no_positions_and_no_files(tmp_path):
    recs = unattributable_day()                           # all of 2026-11-30
    empty = DAY - dt.timedelta(days=3)
    day = legs(recs, np.arange(len(recs)), FILE_REF, empty)
    assert positions(recs, np.arange(len(recs)), FILE_REF, empty).positions == []
    assert files.write(files.render(day, FILE_REF, empty, "23:00"), tmp_path, empty) == []
    assert (tmp_path / "20261127").is_dir()               # cleared: a folder, no party file


def test_a_date_has_not_begun_until_its_cutover():
    from onecard.switch.commands.clearing import FutureDate, settlement_date

    at = dt.datetime(2026, 11, 30, 23, 45, tzinfo=CST)
    with pytest.raises(FutureDate, match="has not begun"):
        settlement_date("2026-12-01", "23:46", at)         # the calendar's tomorrow, not yet
    assert settlement_date("2026-12-01", "23:45", at) == dt.date(2026, 12, 1)   # from 23:45
    assert settlement_date("2026-11-30", "23:46", at) == DAY
    with pytest.raises(FutureDate):
        settlement_date("2026-12-01", "00:00", at)         # midnight: the calendar date
    with pytest.raises(FutureDate):
        settlement_date("2026-12-02", "23:00", at)
    for bad in ("30/11", "", "x" * 5_000, "2026-02-30"):
        with pytest.raises(ValueError, match="YYYY-MM-DD"):
            settlement_date(bad, "23:00", at)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_every_partys_file_agrees_with_its_position_to_the_fen(seed, tmp_path):
    """Seeded random days of every kind, with 1-fen purchases whose fee is 1 fen (the
    acquirer's leg moves 0 fen and carries the fee) and records naming unknown cards: each
    party's file trailer gives its position's debit, credit, fee, net and count."""
    rng = np.random.default_rng(seed)
    kinds = list(clearing.LEGS)
    n = 3_000
    start = int(dt.datetime(2026, 11, 29, 0, 0, tzinfo=CST).timestamp() * 1e6)
    ts = rng.integers(start, start + 2 * 86_400_000_000, n)
    records = [rec(kinds[int(k)], int(rng.integers(0, 100_000)), card=int(c), terminal=int(t),
                   app=int(rng.integers(0, 4)), ts_us=int(when),
                   pool=int(rng.integers(0, 1_000)), personal=int(rng.integers(0, 100)),
                   programme=int(rng.integers(0, 2)), direction=int(rng.integers(1, 3)))
               for k, c, t, when in zip(rng.integers(0, len(kinds), n),
                                        rng.choice([0, 1, 2, NONE, 7], n, p=[.3, .3, .3, .05, .05]),
                                        rng.integers(0, 4, n), ts, strict=True)]
    records += [rec("PURCHASE", 1, card=int(c), ts_us=int(when))         # fee 1 fen, net 0
                for c, when in zip(rng.integers(0, 3, 300), ts[:300], strict=True)]
    recs = np.concatenate(records)
    nos = np.arange(len(recs))
    for date in (dt.date(2026, 11, 29), DAY):
        day = legs(recs, nos, FILE_REF, date)
        summary = {p.party: p for p in positions(recs, nos, FILE_REF, date).positions}
        paths = files.write(files.render(day, FILE_REF, date, "23:00"), tmp_path, date)
        read = {f.party: f for f in map(files.read, paths)}
        assert set(read) == set(summary) and clearing.SUSPENSE in read
        for party, f in read.items():
            p = summary[party]
            assert (f.debit_fen, f.credit_fen, f.fee_fen, f.net_fen, len(f.rows)) == (
                p.debit_fen, p.credit_fen, p.fee_fen, p.net_fen, p.count), party


def test_the_command_clears_a_data_set_and_refuses_bad_dates(demo_dir, capsys):
    today = dt.datetime.now(CST).date().isoformat()
    assert cli.main(["clearing", "run", "--data-dir", str(demo_dir), "--date", today]) == 0
    out = capsys.readouterr().out
    assert f"settlement date {today}" in out and "sum of net positions" in out
    assert out.rstrip().endswith("0.00")
    assert cli.main(["clearing", "medical", "--data-dir", str(demo_dir), "--month",
                     today[:7]]) == 0
    assert "monthly claim per institution" in capsys.readouterr().out
    assert cli.main(["clearing", "medical", "--data-dir", str(demo_dir), "--month",
                     "2026-13"]) == 2
    assert "is not YYYY-MM" in capsys.readouterr().err
    assert cli.main(["clearing", "run", "--data-dir", str(demo_dir), "--date", "30/11"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err
    assert cli.main(["clearing", "run", "--data-dir", str(demo_dir),
                     "--date", "2999-01-01"]) == 2
    assert "in the future" in capsys.readouterr().err


def test_a_switchs_committed_purchases_are_cleared_from_its_store(demo_dir, terminals, world,
                                                                  tmp_path, capsys):
    """Real path: purchases through a running switch over TCP, committed to its SQLite store,
    then cleared from the store alone (with the data set's card and terminal registry)."""
    import json
    import shutil
    import time

    from onecard.core.state import TERM_POS
    from onecard.switch.commands.clearing import clear

    from conftest import iso_session, start_switch

    path = tmp_path / "data"
    shutil.copytree(demo_dir, path)
    info = next(t for t in terminals if t.kind == TERM_POS and t.province == 31
                and t.app == "FIN-PAY")
    pan, _ = world.card(31)
    sw = start_switch(path)
    try:
        sock, t = iso_session(sw, info)
        replies = t.send(t.purchase(pan, 10_000), t.purchase(pan, 2_345))
        # the terminal lost the second: its batch does not balance, and its upload says so
        (settled,) = t.send(t.settlement(10_000, 1, 0, 0))
        uploaded = t.send(t.upload(pan, 10_000, replies[0]["11"]), t.upload_end(1))
        sock.close()
    finally:
        sw.stop()
    assert [r["39"] for r in replies] == ["00", "00"]
    assert settled["48"][-1] == "2" and [r["39"] for r in uploaded] == ["00", "00"]
    now_us = np.array([time.time_ns() // 1000])
    date = clearing.day_date(clearing.settlement_days(now_us, 23 * 60)[0])
    day = clear(path, date)
    nets = {p.party: p.net_fen for p in day.positions}
    assert day.records == 2 and nets == {"issuer:31": -12_345,
                                         f"acquirer:{info.merchant}": 12_345 - 50 - 12,
                                         "scheme:onecard": 62}
    # the command's files, run twice: the same bytes, and they read back as those positions
    written = []
    for out in ("first", "second"):
        assert cli.main(["clearing", "files", "--data-dir", str(path), "--date",
                         date.isoformat(), "--out", str(tmp_path / out)]) == 0
        folder = tmp_path / out / date.strftime("%Y%m%d")
        written.append({p.name: p.read_bytes() for p in folder.iterdir()})
    assert written[0] == written[1] and len(written[0]) == 3
    assert cli.main(["clearing", "exceptions", "--data-dir", str(path), "--date",
                     date.isoformat(), "--json", str(tmp_path / "x.json")]) == 0
    assert f"MISSING_AT_TERMINAL-{info.tid}-1-{int(replies[1]['11'])}" in capsys.readouterr().out
    (found,) = json.loads((tmp_path / "x.json").read_text())
    assert (found["switch_amount_minor"], found["status"]) == (2_345, "open")
    read = [files.read(tmp_path / "first" / date.strftime("%Y%m%d") / name)
            for name in written[0]]
    assert {f.party: f.net_fen for f in read} == nets
    assert all(row["card"] == files.mask_pan(int(pan)) for f in read for row in f.rows)


def test_a_day_with_card_less_reversals_clears_by_every_command(demo_dir, terminals, world,
                                                               tmp_path, capsys):
    """Real path: 0400s of requests the switch never had, for a card it does not know (what
    an issuer that lost its records journals for other regions' reversal advices: card-less
    REVERSAL records), and a 1-fen purchase whose fee is 1 fen, through a running switch over
    TCP into its store; then run, files, exceptions and hub from the store alone."""
    import json
    import shutil

    from onecard.core.state import TERM_POS
    from onecard.switch.commands.clearing import current_date

    from conftest import iso_session, start_switch

    path = tmp_path / "data"
    shutil.copytree(demo_dir, path)
    info = next(t for t in terminals if t.kind == TERM_POS and t.province == 31
                and t.app == "FIN-PAY")
    pan, _ = world.card(31)
    unknown = pan[:-6] + "999999"
    sw = start_switch(path)
    try:
        sock, t = iso_session(sw, info)
        replies = t.send(t.purchase(pan, 1), t.reversal(unknown, 700, "900001"),
                         t.reversal(unknown, 800, "900002"))
        sock.close()
    finally:
        sw.stop()
    assert [r["39"] for r in replies] == ["00"] * 3
    date = current_date("23:00")
    common = ["--data-dir", str(path), "--date", date.isoformat()]
    assert cli.main(["clearing", "run", *common, "--json", str(tmp_path / "p.json")]) == 0
    got = {p["party"]: p for p in json.loads((tmp_path / "p.json").read_text())["positions"]}
    mine = got[f"acquirer:{info.merchant}"]
    assert (mine["net_fen"], mine["fee_fen"], mine["count"]) == (0, 1, 1)
    assert sum(p["net_fen"] for p in got.values()) == 0
    found = []
    for _ in range(2):                                     # the same ids every time
        assert cli.main(["clearing", "exceptions", *common, "--json",
                         str(tmp_path / "x.json")]) == 0
        found.append([(e["id"], e["seq"], e["reason"])
                      for e in json.loads((tmp_path / "x.json").read_text())
                      if e["kind"] == "UNATTRIBUTED"])
    assert found[0] == found[1] and [f[1:] for f in found[0]] == [(900001, "no_card"),
                                                                  (900002, "no_card")]
    assert all(i.startswith(f"{date:%Y%m%d}-UNATTRIBUTED-{info.tid}-") for i, *_ in found[0])
    assert cli.main(["clearing", "files", *common, "--out", str(tmp_path / "out")]) == 0
    f = files.read(tmp_path / "out" / f"{date:%Y%m%d}" / f"acquirer_{info.merchant}.csv")
    assert (f.net_fen, f.fee_fen, len(f.rows)) == (0, 1, 1)          # the 1-fen purchase
    assert cli.main(["clearing", "hub", "--date", date.isoformat(), "--region",
                     f"all={path}"]) == 0
    capsys.readouterr()
    # the next settlement date has not begun, whatever the calendar says: exit 2
    assert cli.main(["clearing", "run", "--data-dir", str(path), "--date",
                     (date + dt.timedelta(days=1)).isoformat()]) == 2
    assert "has not begun" in capsys.readouterr().err


def test_the_documentation_names_every_role_and_kind():
    text = (Path(__file__).resolve().parent.parent / "protocols" / "CLEARING.md").read_text()
    for role in clearing.ROLES:
        assert f"| `{role.name}` |" in text
    for kind in clearing.LEGS:
        assert f"`{kind}`" in text


# ---- clearing files ------------------------------------------------------------------------

GOLDEN = Path(__file__).parent / "fixtures" / "clearing"
FILE_REF = Reference(card_province=REF.card_province, card_region=REF.card_region,
                     terminal_acquirer=REF.terminal_acquirer, app_codes=REF.app_codes,
                     programme_codes=REF.programme_codes,
                     card_pan=np.array([6231310000000000011, 6231320000000000029,
                                        6231810000000000034], dtype=np.uint64),
                     terminal_tid=["POS00001", "GATE0001", "HOSP0001", "KIOSK001"])


def golden_day() -> tuple:
    """A small fixed day: a purchase, its void, an HKD purchase, a metro tap, a medical bill,
    a pension, a reversal of the day before's purchase after the cut-over."""
    at = lambda h, m: int(dt.datetime(2026, 11, 30, h, m, tzinfo=CST).timestamp() * 1e6)  # noqa: E731
    hkd = rec("PURCHASE", 9_120, card=2, ts_us=at(10, 5))
    view(hkd, "payment")["amount_asked_minor"], view(hkd, "payment")["currency"] = 10_000, 344
    void = rec("VOID", 10_000, ts_us=at(9, 30))
    view(void, "payment")["orig_seq"] = 11
    records = [rec("PURCHASE", 10_000, ts_us=at(9, 0)), void, hkd,
               rec("TAP", 400, card=1, terminal=METRO, app=1, ts_us=at(8, 15)),
               rec("MEDICAL", 3_000, card=1, terminal=HOSPITAL, app=2, pool=5_000,
                   personal=2_000, ts_us=at(15, 0)),
               rec("CREDIT", 250_000, programme=1, ts_us=at(6, 0)),
               rec("REVERSAL", 700, ts_us=at(23, 0) - 86_400_000_000)]
    recs = np.concatenate(records)
    recs["seq"] = np.arange(11, 11 + len(recs))
    return recs, np.arange(100, 100 + len(recs))


def test_clearing_files_are_the_golden_ones_and_byte_identical_on_rerun(tmp_path):
    recs, nos = golden_day()
    day = legs(recs, nos, FILE_REF, DAY)
    paths = files.write(files.render(day, FILE_REF, DAY, "23:00"), tmp_path, DAY)
    names = sorted(p.name for p in paths)
    assert names == sorted(p.name for p in (GOLDEN / "20261130").iterdir())
    for p in paths:
        assert p.read_bytes() == (GOLDEN / "20261130" / p.name).read_bytes(), p.name
    # again, from the records in another order: the same bytes
    order = np.arange(len(recs))[::-1]
    again = files.render(legs(recs[order], nos[order], FILE_REF, DAY), FILE_REF, DAY, "23:00")
    assert {files.file_name(k): v for k, v in again.items()} == {
        p.name: p.read_bytes() for p in paths}
    # every file reads back with its totals, matching the date's positions
    nets = day_of(*[recs[i:i + 1] for i in range(len(recs))])
    for p in paths:
        f = files.read(p)
        assert f.net_fen == nets[f.party] and f.date == "20261130"
        assert all("*" in r["card"] for r in f.rows)                   # masked, always


def test_a_clearing_file_altered_or_cut_is_detected(tmp_path):
    recs, nos = golden_day()
    (path, *_) = files.write(files.render(legs(recs, nos, FILE_REF, DAY), FILE_REF, DAY,
                                          "23:00"), tmp_path, DAY)
    good = path.read_bytes()
    path.write_bytes(good.replace(b",10000,", b",10001,", 1))
    with pytest.raises(files.ClearingFileError, match="checksum mismatch"):
        files.read(path)
    lines = good.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-2] + lines[-1:]))                  # a line dropped
    with pytest.raises(files.ClearingFileError, match="checksum"):
        files.read(path)
    path.write_bytes(b"".join(lines[:-1]))                               # no trailer
    with pytest.raises(files.ClearingFileError, match="not a clearing file"):
        files.read(path)


# ---- medical -------------------------------------------------------------------------------

def test_medical_totals_per_institution_and_fund_monthly_and_across_provinces():
    """A Jiangsu insured treated in Shanghai twice (once refunded, on another date of the
    month) and a Shanghai insured at the same hospital: per institution and fund, the
    month's claim, and what Jiangsu owes Shanghai (pool and personal shares)."""
    from onecard.switch.clearing.medical import medical

    ref = Reference(**{**{f: getattr(FILE_REF, f) for f in FILE_REF.__struct_fields__},
                       "terminal_province": np.array([31, 31, 31, 31])})
    later = NOON_US + 5 * 86_400_000_000
    recs = np.concatenate([
        rec("MEDICAL", 3_000, card=1, terminal=HOSPITAL, pool=5_000, personal=2_000),
        rec("MEDICAL", 1_000, card=1, terminal=HOSPITAL, pool=500, personal=0, ts_us=later),
        rec("MEDICAL_REFUND", 1_000, card=1, terminal=HOSPITAL, pool=500, ts_us=later),
        rec("MEDICAL", 800, card=0, terminal=HOSPITAL, pool=1_200, personal=400),
        rec("MEDICAL", 9_999, card=0, terminal=HOSPITAL, pool=1, rc="51"),   # declined
        rec("PURCHASE", 10_000)])
    day = medical(recs, ref, DAY, DAY)
    assert [(t.key, t.bills, t.bill_fen, t.pool_fen, t.personal_fen, t.cash_fen)
            for t in day.by_institution_fund] == [
        (["HOSPITAL-1", "310000"], 1, 2_400, 1_200, 400, 800),
        (["HOSPITAL-1", "320100"], 1, 10_000, 5_000, 2_000, 3_000)]
    month = medical(recs, ref, dt.date(2026, 11, 1), dt.date(2026, 12, 31))
    (claim,) = month.by_institution
    assert (claim.key, claim.bills, claim.pool_fen, claim.bill_fen) == (
        ["HOSPITAL-1"], 2, 6_200, 12_400)                     # the refund netted out
    (away,) = month.cross_province
    assert (away.key, away.pool_fen, away.personal_fen) == (["31", "32"], 5_000, 2_000)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_seeded_real_traffic_of_every_kind_nets_to_zero_on_every_date(demo_dir, terminals,
                                                                     seed):
    """The engine's own records of a seeded random run (tests/test_invariants.py: purchases,
    voids, reversals, HKD, canteen tiers, taps online and offline, venues, medical bills and
    refunds, top-ups, credits, card changes, retransmissions): every approved record of a
    money-moving kind is cleared on exactly one date, and each date nets to zero."""
    import random

    from onecard.protocols.journal_codec import unpack
    from onecard.switch.clearing.reader import registry
    from onecard.switch.store import sqlite

    from conftest import World
    from test_invariants import Traffic

    world = World(demo_dir, terminals)
    traffic = Traffic(world, random.Random(seed))
    for _ in range(400):
        traffic.step()
    first, data = world.engine.journal.take()
    recs = unpack(data)
    nos = np.arange(first, first + len(recs))
    conn = sqlite.connect(sqlite.db_path(demo_dir), readonly=True)
    try:
        ref = registry(conn, world.state.cards["pan"], world.state.cards["region"])
    finally:
        conn.close()
    moving = (recs["rc"] == CODE_INDEX["00"]) & np.isin(
        recs["kind"], [KIND_BY_NAME[k].value for k in clearing.LEGS])
    cleared = 0
    for day in sorted(set(clearing.settlement_days(recs["ts_us"], 23 * 60).tolist())):
        d = positions(recs, nos, ref, clearing.day_date(day))
        assert sum(p.net_fen for p in d.positions) == 0
        cleared += d.records
    assert cleared == int(moving.sum()) > 0


# ---- regions: hub netting ------------------------------------------------------------------

def test_regions_clear_their_own_journals_and_the_hub_nets_between_them(demo_dir, terminals):
    """A Jiangsu card at a Shanghai POS is decided and journaled by Jiangsu ("js"), a
    Shanghai card there by Shanghai ("sh"): each clears its own journal, and the hub finds that
    js owes sh the merchant's share and each region the hub its fees; the nets sum to zero."""
    from onecard.protocols.journal_codec import unpack
    from onecard.switch.clearing import hub
    from onecard.switch.clearing.reader import registry
    from onecard.switch.store import sqlite

    from test_forward import FOREIGN, HOME, Pair

    pair = Pair(demo_dir, terminals)
    t = pair.iso()
    foreign, _ = pair.iss.card(FOREIGN)
    local, _ = pair.acq.card(HOME)
    replies = t.send(t.purchase(foreign, 10_000), t.purchase(local, 3_000))
    assert [r["39"] for r in replies] == ["00", "00"]
    conn = sqlite.connect(sqlite.db_path(demo_dir), readonly=True)
    try:
        days, ref = {}, None
        for name, world in (("sh", pair.acq), ("js", pair.iss)):
            ref = registry(conn, world.state.cards["pan"], world.state.cards["region"])
            first, data = world.engine.journal.take()
            recs = unpack(data)
            when = clearing.day_date(clearing.settlement_days(recs["ts_us"][-1:], 23 * 60)[0])
            days[name] = positions(recs, np.arange(first, first + len(recs)), ref, when)
    finally:
        conn.close()
    assert days["sh"].records == 1 and days["js"].records == 1     # FORWARDED moves nothing
    owners = {int(p): ("js" if p == FOREIGN else "sh") for p in set(ref.card_province)}
    owners.update({int(p): owners.get(int(p), "sh") for p in set(ref.terminal_province)})
    acquirer_province = dict(zip(ref.terminal_acquirer, ref.terminal_province.tolist(),
                                 strict=True))
    netted = hub.net(days, owners, acquirer_province)
    # the fees (50 on the Jiangsu card's purchase, 15 on the local one) are the hub's
    assert [(f.payer, f.payee, f.fen) for f in netted.flows] == [
        ("js", "hub", 50), ("js", "sh", 9_950), ("sh", "hub", 15)]
    assert {r.region: r.net_fen for r in netted.regions} == {
        "hub": 65, "js": -10_000, "sh": 9_935}


def test_the_hub_command_nets_the_regions_data_sets(demo_dir, tmp_path, capsys):
    import sqlite3

    from onecard.switch.commands.split import split_data_set

    conn = sqlite3.connect(f"file:{demo_dir / 'onecard.db'}?mode=ro", uri=True)
    provinces = [p for (p,) in conn.execute("SELECT DISTINCT province FROM regions")]
    conn.close()
    split_data_set(demo_dir, tmp_path / "js", [32])
    split_data_set(demo_dir, tmp_path / "sh", [p for p in provinces if p != 32])
    today = dt.datetime.now(CST).date().isoformat()
    assert cli.main(["clearing", "hub", "--date", today, "--region", f"sh={tmp_path / 'sh'}",
                     "--region", f"js={tmp_path / 'js'}"]) == 0
    assert f"hub netting, settlement date {today}" in capsys.readouterr().out
    assert cli.main(["clearing", "hub", "--date", today, "--region", "sh"]) == 2
    assert "is not NAME=DATA_DIR" in capsys.readouterr().err


def test_the_hub_finds_approvals_the_terminal_was_told_were_91(demo_dir, terminals):
    """The issuer decides and commits, but its answer comes too late: the acquirer answered
    91 (FORWARDED, origin UNAVAILABLE). A native tap has no reversal, so it is a late
    approval to resolve; a purchase its terminal then reversed (0400) is not."""
    from onecard.core.state import TERM_BUS_READER
    from onecard.protocols.journal_codec import unpack
    from onecard.switch.clearing import hub

    from test_forward import FOREIGN, Pair

    class LatePair(Pair):
        def serve(self, sent: bytes) -> bytes | None:
            if self.up:
                return super().serve(sent)
            self.iss.engine.serve_forwarded(sent)      # decided and committed there ...
            return None                                # ... answered after the timeout

    pair = LatePair(demo_dir, terminals)
    pair.up = False
    reader, pos = pair.native(TERM_BUS_READER), pair.iso()
    pan, _ = pair.iss.card(FOREIGN)
    (tap,) = reader.send([reader.tap(pan)])
    stan = pos.next_stan()
    (bought,) = pos.send(pos.purchase(pan, 700, stan=stan))
    assert (tap.rc, bought["39"]) == ("91", "91")
    pair.up = True
    (undone,) = pos.send(pos.reversal(pan, 700, stan))
    assert undone["39"] == "00"
    journals = {}
    for name, world in (("sh", pair.acq), ("js", pair.iss)):
        first, data = world.engine.journal.take()
        journals[name] = (unpack(data), np.arange(first, first + len(data) // 80))
    iss = journals["js"][0]
    assert ((iss["kind"] == KIND_BY_NAME["PURCHASE"].value) & (iss["seq"] == int(stan))
            & (iss["rc"] == CODE_INDEX["00"])).sum() == 1      # approved there, then undone
    when = clearing.day_date(clearing.settlement_days(journals["sh"][0]["ts_us"][-1:],
                                                      23 * 60)[0])
    late = hub.late_approvals("sh", journals["sh"][0], "js", *journals["js"], when)
    assert [(x.acquirer, x.issuer, x.kind, x.seq, x.terminal) for x in late] == [
        ("sh", "js", "TAP", tap.seq, reader.info.idx)]
    assert late[0].id == f"LATE-js-{late[0].issuer_record_no}"     # what an operator cites
    assert hub.late_approvals("js", journals["js"][0], "sh", *journals["sh"], when) == []
