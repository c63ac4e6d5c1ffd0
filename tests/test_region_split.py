"""Cutting a data set into regional parts (switch/commands/split.py): parts covering every
province hold every card exactly once, with the state the whole had (balances, holders, deny
list, sessions, the answers a retransmission must get), they add up to the whole to the fen,
each loads and is served by a switch, and requests that cannot be met write nothing."""

from __future__ import annotations

import re
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from onecard.core import operations
from onecard.core.engine import ISO8583, Engine
from onecard.core.state import (
    CARD_LOST,
    CARD_REPLACED,
    HOLDER_DENIED,
    TERM_BUS_READER,
    TERM_MEDICAL,
    TERM_POS,
)
from onecard.protocols import native
from onecard.protocols.journal import FORMAT
from onecard.protocols.journal_codec import RECORD_DTYPE
from onecard.switch import cli, demo
from onecard.switch.commands.split import (
    SplitError,
    card_provinces,
    plan_split,
    split_data_set,
)
from onecard.switch.security import keystore
from onecard.switch.store import loader, snapshots, sqlite
from onecard.switch.store.encrypt import mask
from onecard.switch.terminals import read_terminals

from conftest import World, iso_balance, iso_session, on_postgresql, start_switch
from termsim import IsoTerminal, NativeTerminal

# Three regions covering every province of the demo data (the YRD, JJJ and GBA groups).
PARTITION = ((31, 32, 33, 34), (11, 12, 13), (44, 81, 82))
PURCHASE_FEN = 1234


@dataclass
class Traffic:
    """What was done to the source before it was split, to look for in the parts."""

    world: World                   # the source's live state after the traffic
    pos: IsoTerminal               # a Shanghai POS, signed on before the split
    purchase: bytes                # a purchase it made (as sent), for a retransmission
    purchase_reply: dict
    purchase_pan: str
    lost_pan: str
    denied_pan: str
    replaced_pan: str
    new_pan: str                   # the replacement: journaled, no cards row yet


def _native(world: World, kind: int, province: int, place: str | None = None
            ) -> NativeTerminal:
    info = next(t for t in world.terminals if t.kind == kind and t.province == province
                and (place is None or t.place == place))
    t = NativeTerminal(info, world.exchange(1))
    assert t.signon().rc == "00"
    return t


def _drive(world: World) -> Traffic:
    """Purchases (with the canteen's daily totals) in three regions, a medical bill, an
    offline upload into the red (the deny list), a lost card, a replacement card, a
    disbursement."""
    pos = world.iso(31)
    pan, _ = world.card(31)
    purchase = pos.purchase(pan, PURCHASE_FEN)
    (reply,) = pos.send(purchase)
    assert reply["39"] == "00"
    canteen = IsoTerminal(next(t for t in world.terminals if t.kind == TERM_POS
                               and t.province == 31 and t.place == "elderly canteen"),
                          world.exchange(ISO8583))
    assert canteen.signon()["39"] == "00"
    assert canteen.send(canteen.purchase(world.card(31, nth=1)[0], 1500))[0]["39"] == "00"
    for province in (44, 11):
        t = world.iso(province)
        assert t.send(t.purchase(world.card(province)[0], 999))[0]["39"] == "00"
    doctor = _native(world, TERM_MEDICAL, 31, "hospital")
    assert doctor.send([native.Medical(doctor.next_seq(), world.card(31, nth=2)[0],
                                       250_000)])[0].rc == "00"
    denied_pan, denied = world.card(44, nth=3)
    world.set_balance(denied, 50)
    bus = _native(world, TERM_BUS_READER, 44)
    when = int(time.time()) - 3600
    ups = [native.OfflineTap(10_000 + i, denied_pan, 0, native.TAP_IN, when + 60 * i)
           for i in range(3)]
    assert {r.rc for r in bus.send(ups)} == {"00"} and world.balance(denied) < 0
    a = world.engine.authoriser
    lost_pan, lost = world.card(32)
    operations.card_change(a, lost, status=CARD_LOST, operator=2)
    pans = np.array([int(world.card(p, nth=4)[0]) for p in (31, 44, 13)], dtype=np.uint64)
    rcs, _ = operations.disburse(a, 1, 202611, pans, np.full(3, 12_000, dtype=np.int64), 1)
    assert (rcs == 0).all()
    replaced_pan, replaced = world.card(11, nth=1)     # the last: World's cards are fixed
    body = replaced_pan[:5] + "1" + "999000000001"
    new_pan = body + demo.luhn_digit(body)
    operations.card_new(a, int(new_pan), int(world.state.cards["account"][replaced]),
                        region=int(world.state.cards["region"][replaced]), expiry_yymm=3612,
                        functions=7, operator=2)
    operations.card_change(a, replaced, status=CARD_REPLACED, operator=2)
    return Traffic(world, pos, purchase, reply, pan, lost_pan, denied_pan, replaced_pan,
                   new_pan)


def _commit(world: World) -> None:
    """The engine's journal records into the data set's journal, after its checkpoint: a
    split must load them (replay), not just read the checkpoint."""
    first_no, data = world.engine.journal.take()
    conn = sqlite3.connect(world.data_dir / sqlite.DB_NAME)
    conn.execute("INSERT INTO journal (first_no, n, ts_us, records, format) "
                 "VALUES (?, ?, ?, ?, ?)",
                 (first_no, len(data) // RECORD_DTYPE.itemsize, 0, data, FORMAT))
    conn.commit()
    conn.close()


@pytest.fixture(scope="module")
def traffic(demo_dir, terminals, tmp_path_factory) -> Traffic:
    src = tmp_path_factory.mktemp("split-source") / "data"
    shutil.copytree(demo_dir, src)
    world = World(src, terminals)
    done = _drive(world)
    _commit(world)
    return done


@pytest.fixture(scope="module")
def parts(traffic, tmp_path_factory) -> dict:
    """{owns: (directory, summary)} for the three regions."""
    root = tmp_path_factory.mktemp("split-parts")
    out = {}
    for owns in PARTITION:
        dst = root / "-".join(map(str, owns))
        out[owns] = dst, split_data_set(traffic.world.data_dir, dst, owns)
    return out


@pytest.fixture(scope="module")
def loaded(parts) -> dict:
    return {owns: loader.load(path) for owns, (path, _) in parts.items()}


def _part_of(pan: str | int) -> tuple[int, ...]:
    province = int(str(pan)[3:5])
    return next(owns for owns in PARTITION if province in owns)


def test_card_provinces_reads_the_number():
    pans = np.array([6213110000000000019, 6214490000000000012, 1234], dtype=np.uint64)
    assert card_provinces(pans).tolist() == [31, 44, -1]


def test_the_source_had_journal_records_after_its_checkpoint(traffic):
    upto, _, _ = snapshots.newest(traffic.world.data_dir)
    conn = sqlite.connect(sqlite.db_path(traffic.world.data_dir), readonly=True)
    assert sqlite.journal_end(conn) > upto
    conn.close()


def test_parts_add_up_to_the_whole_to_the_fen(traffic, parts, loaded):
    whole = traffic.world.state
    summaries = [summary for _, summary in parts.values()]
    assert sum(s.cards for s in summaries) == whole.n_cards
    assert sum(s.accounts for s in summaries) == whole.n_accounts
    assert sum(s.balance_fen for s in summaries) == int(whole.accounts["balance_fen"].sum())
    assert sum(s.medical_fen for s in summaries) == int(whole.accounts["medical_fen"].sum())
    assert sum(s.sessions for s in summaries) == whole.n_terminals
    snap = whole.snapshot()
    assert sum(s.deny_entries for s in summaries) == len(snap["deny_log"]) > 0
    for name in ("daily_app", "medical_year"):
        parts_total = sum(len(part.state.snapshot()[name]) for part in loaded.values())
        assert parts_total == len(snap[name]) > 0, name
    for column in ("debit_fen", "debit_count"):
        total = sum(int(part.state.terminals[column].sum()) for part in loaded.values())
        assert total == int(whole.terminals[column].sum()) > 0, column
    src = sqlite3.connect(traffic.world.data_dir / sqlite.DB_NAME)
    for table, field in (("filings", "filings"), ("disbursements", "disbursements")):
        (rows,) = src.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert sum(getattr(s, field) for s in summaries) == rows > 0, table
    src.close()
    for owns, part in loaded.items():
        _, summary = parts[owns]
        assert (part.state.n_cards, part.state.n_accounts) == (summary.cards, summary.accounts)
        assert int(part.state.accounts["balance_fen"].sum()) == summary.balance_fen
        assert part.next_record_no == 0 and part.replayed == 0   # a data set at rest


def test_every_card_of_a_part_is_of_an_owned_province(loaded):
    for owns, part in loaded.items():
        assert set(card_provinces(part.state.cards["pan"]).tolist()) <= set(owns)


def _holder_row(data_dir: Path, keys, idx: int) -> tuple[bytes, str, str, str]:
    conn = sqlite3.connect(data_dir / sqlite.DB_NAME)
    row = conn.execute("SELECT pan_hmac, holder_name, id_number, bank FROM cards WHERE idx = ?",
                       (idx,)).fetchone()
    conn.close()
    return (bytes(row[0]), keys.open_text("cards", "holder_name", idx, row[1]),
            keys.open_text("cards", "id_number", idx, row[2]), row[3])


def test_every_card_is_in_its_part_with_the_same_state(traffic, loaded):
    whole = traffic.world.state
    for idx in range(whole.n_cards):
        card = whole.cards[idx]
        pan = int(card["pan"])
        owner = _part_of(pan)
        for owns, part in loaded.items():
            found = part.state.card_index(pan)
            assert (found >= 0) == (owns == owner), (mask(pan), owns)
        part = loaded[owner].state
        got = part.cards[part.card_index(pan)]
        for field in ("status", "expiry_yymm", "functions", "region", "trip_station"):
            assert got[field] == card[field], field
        mine, theirs = part.accounts[got["account"]], whole.accounts[card["account"]]
        assert mine.tobytes() == theirs.tobytes()     # balance, medical, flags, daily, ...
        assert part.holder_of(int(got["account"])) == whole.holder_of(int(card["account"]))


def test_cards_rows_are_sealed_again_at_their_new_place(traffic, parts, loaded):
    """Holder name, ID number and bank as the source has them; the replacement card the
    source journaled without a row gets its account's."""
    source = traffic.world
    for pan, source_pan in ((traffic.purchase_pan, traffic.purchase_pan),
                            (traffic.lost_pan, traffic.lost_pan),
                            (traffic.new_pan, traffic.replaced_pan)):
        owner = _part_of(pan)
        path, part = parts[owner][0], loaded[owner]
        new = part.state.card_index(int(pan))
        old = source.state.card_index(int(source_pan))
        hmac, *holder = _holder_row(path, part.keys, new)
        assert holder == list(_holder_row(source.data_dir, source.keys, old)[1:])
        assert hmac == part.keys.pan_hmac(pan) == source.keys.pan_hmac(pan)


def test_deny_list_and_card_status_go_with_the_card(traffic, loaded):
    lost = loaded[_part_of(traffic.lost_pan)].state
    assert lost.cards["status"][lost.card_index(int(traffic.lost_pan))] == CARD_LOST
    replaced = loaded[_part_of(traffic.replaced_pan)].state
    assert replaced.cards["status"][replaced.card_index(int(traffic.replaced_pan))] == (
        CARD_REPLACED)
    for owns, part in loaded.items():
        listed = {pan for _, pan, added in part.state.deny_changes() if added}
        assert (int(traffic.denied_pan) in listed) == (owns == _part_of(traffic.denied_pan))
    denied = loaded[_part_of(traffic.denied_pan)].state
    account = denied.cards["account"][denied.card_index(int(traffic.denied_pan))]
    assert denied.accounts["flags"][account] & HOLDER_DENIED


def test_every_part_has_every_terminal_and_sessions_stay_with_their_acquirer(
        traffic, parts, loaded):
    whole = traffic.world.state
    signed_on = {int(t) for t in np.flatnonzero(whole.terminals["signed_on"])}
    assert signed_on
    for owns, (path, _) in parts.items():
        part = loaded[owns].state
        assert np.array_equal(part.terminals["tid"], whole.terminals["tid"])
        assert [t.tid for t in read_terminals(path)] == [t.tid for t in traffic.world.terminals]
        for t in signed_on:
            province = traffic.world.terminals[t].province
            assert bool(part.terminals["signed_on"][t]) == (province in owns)


def test_a_retransmission_after_the_split_gets_the_original_answer(traffic, parts):
    """The Shanghai POS's purchase, sent again to the Shanghai region's part: the original
    answer (approval and retrieval reference) and no second debit; the terminal's session
    came along, so it goes on without signing on again."""
    path, _ = parts[_part_of(traffic.purchase_pan)]
    part = loader.load(path)
    engine = Engine(part.state, next_record_no=part.next_record_no)
    idx = part.state.card_index(int(traffic.purchase_pan))
    account = part.state.cards["account"][idx]
    before = int(part.state.accounts["balance_fen"][account])

    def exchange(data: bytes) -> bytes:
        return engine.process(ISO8583, data)[1]

    pos = IsoTerminal(traffic.pos.info, exchange, mak=traffic.pos.mak, stan=traffic.pos.stan)
    (again,) = pos.send(traffic.purchase)
    assert again["39"] == "00" and again["37"] == traffic.purchase_reply["37"]
    assert int(part.state.accounts["balance_fen"][account]) == before
    (fresh,) = pos.send(pos.purchase(traffic.purchase_pan, 100))
    assert fresh["39"] == "00"
    assert int(part.state.accounts["balance_fen"][account]) == before - 100


# ---- requests that cannot be met -----------------------------------------------------------


@pytest.mark.parametrize(("owns", "says"), [((), "owns no province"),
                                            ((31, 99), "unknown province codes [99]")])
def test_bad_provinces_are_refused(traffic, tmp_path, owns, says):
    with pytest.raises(SplitError, match=re.escape(says)):
        split_data_set(traffic.world.data_dir, tmp_path / "part", owns)
    assert not (tmp_path / "part").exists()


def test_a_destination_in_use_or_inside_the_source_is_refused(traffic, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(SplitError, match="not an empty directory"):
        split_data_set(traffic.world.data_dir, busy, (31,))
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    with pytest.raises(SplitError, match="outside the source"):
        split_data_set(traffic.world.data_dir, traffic.world.data_dir / "part", (31,))
    assert not (traffic.world.data_dir / "part").exists()


def test_an_account_with_cards_in_two_provinces_is_refused(demo_dir, terminals, tmp_path):
    src = tmp_path / "data"
    shutil.copytree(demo_dir, src)
    world = World(src, terminals)
    _, idx = world.card(31)
    body = "621111" + "999000000002"            # a Beijing number on a Shanghai account
    operations.card_new(world.engine.authoriser, int(body + demo.luhn_digit(body)),
                        int(world.state.cards["account"][idx]),
                        region=int(world.state.cards["region"][idx]), expiry_yymm=3612,
                        functions=7)
    _commit(world)
    with pytest.raises(SplitError, match="1 accounts have cards of owned and of other"):
        split_data_set(src, tmp_path / "part", (31, 32, 33, 34))
    assert not (tmp_path / "part").exists()
    # every part containing both provinces is fine
    summary = split_data_set(src, tmp_path / "both", (11, 31))
    assert summary.cards == int(np.isin(card_provinces(world.state.cards["pan"]),
                                        (11, 31)).sum())


def test_plan_keeps_cardless_accounts_by_their_region():
    from onecard.core.state import CARD_DTYPE

    cards = np.zeros(2, dtype=CARD_DTYPE)
    cards["pan"] = [6213110000000000019, 6214410000000000016]
    cards["account"] = [0, 2]
    plan = plan_split(cards, np.array([31, 31, 44]), (31,))     # account 1 has no card
    assert plan.cards.tolist() == [0] and plan.accounts.tolist() == [0, 1]
    assert plan.account_map.tolist() == [0, 1, -1]


# ---- the key-encryption key ----------------------------------------------------------------


def test_the_source_kek_file_is_copied_beside_the_part(tmp_path, monkeypatch):
    monkeypatch.delenv(keystore.ENV_KEK)
    src = tmp_path / "src"
    demo.generate(src, cards=1000, seed=3, progress=lambda _: None)
    summary = split_data_set(src, tmp_path / "part", (44,))
    kek = tmp_path / "part.kek"
    assert summary.kek == str(kek)
    assert kek.read_bytes() == (tmp_path / "src.kek").read_bytes()
    assert kek.stat().st_mode & 0o777 == 0o600
    assert loader.load(tmp_path / "part").state.n_cards == summary.cards
    # a different key already where the part's would go: refused, and left alone
    other = tmp_path / "other.kek"
    other.write_text("ab" * 32 + "\n")
    with pytest.raises(SplitError, match="another key-encryption key"):
        split_data_set(src, tmp_path / "other", (44,))
    assert other.read_text() == "ab" * 32 + "\n" and not (tmp_path / "other").exists()


def test_a_configured_kek_file_serves_both_and_is_not_copied(tmp_path, monkeypatch):
    monkeypatch.delenv(keystore.ENV_KEK)
    shared = tmp_path / "keys" / "onecard.kek"
    src = tmp_path / "src"
    demo.generate(src, cards=1000, seed=3, progress=lambda _: None, kek_file=str(shared))
    summary = split_data_set(src, tmp_path / "part", (31,), kek_file=str(shared))
    assert summary.kek == str(shared) and not (tmp_path / "part.kek").exists()
    assert loader.load(tmp_path / "part", kek_file=str(shared)).state.n_cards == summary.cards


# ---- the command ---------------------------------------------------------------------------


def test_the_command_splits_and_reports(traffic, parts, tmp_path, capsys):
    dst = tmp_path / "gba"
    assert cli.main(["region", "split", "--data-dir", str(traffic.world.data_dir), "--owns",
                     "44,81,82", "--to", str(dst)]) == 0
    out, err = capsys.readouterr()
    summary = parts[(44, 81, 82)][1]
    assert f"{summary.cards:,} cards" in out and f"balance {summary.balance_fen:,} fen" in out
    assert "onecard region split: loading" in err
    assert loader.load(dst).state.n_cards == summary.cards
    assert traffic.purchase_pan not in out + err           # no card number in clear


@pytest.mark.parametrize(("args", "says"), [
    (["--owns", "31,x"], "--owns '31,x'"),
    (["--owns", "99"], "unknown province codes [99]"),
    (["--owns", ""], "give province codes"),
])
def test_the_command_refuses_bad_input_in_one_line(traffic, tmp_path, capsys, args, says):
    dst = tmp_path / "part"
    code = cli.main(["region", "split", "--data-dir", str(traffic.world.data_dir),
                     "--to", str(dst), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("onecard: ") and says in err
    assert len(err.strip().splitlines()) == 1 and not dst.exists()


def test_the_command_refuses_a_missing_source(tmp_path, capsys):
    code = cli.main(["region", "split", "--data-dir", str(tmp_path / "none"), "--owns", "31",
                     "--to", str(tmp_path / "part")])
    assert code == 2 and "onecard: no data set" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


# ---- a switch on a part --------------------------------------------------------------------


@pytest.mark.slow
def test_a_switch_serves_a_part(traffic, parts, tmp_path):
    """The GBA part, served: its Guangdong cards are approved at a Guangzhou POS; a Shanghai
    card is not known here (another region's)."""
    data = tmp_path / "data"
    shutil.copytree(parts[(44, 81, 82)][0], data)
    world = World(data, read_terminals(data))
    sw = start_switch(data)
    try:
        # index 1: the first Guangzhou POS used its STANs before the split (its ring came along)
        sock, pos = iso_session(sw, world.terminal(TERM_POS, 44, index=1))
        pan, idx = world.card(44)
        before = world.balance(idx)
        assert iso_balance(pos, pan) == before
        (reply,) = pos.send(pos.purchase(pan, 2500))
        assert reply["39"] == "00"
        assert iso_balance(pos, pan) == before - 2500
        (foreign,) = pos.send(pos.purchase(traffic.purchase_pan, 100))
        assert foreign["39"] == "14"
        sock.close()
    finally:
        assert sw.stop() == 0


@pytest.mark.slow
def test_a_part_imports_into_postgresql(parts, tmp_path, request):
    """A part has the shape of a new data set (checkpoint at record 0, empty journal), which
    ``onecard db import`` takes as it takes any."""
    data = tmp_path / "data"
    shutil.copytree(parts[(11, 12, 13)][0], data)
    dsn = on_postgresql(data, request.getfixturevalue("pg_server"), "region_split_part")
    got = loader.load(data, dsn=dsn)
    summary = parts[(11, 12, 13)][1]
    assert (got.state.n_cards, got.next_record_no) == (summary.cards, 0)
    assert int(got.state.accounts["balance_fen"].sum()) == summary.balance_fen


def test_other_regions_deny_entries_are_left_out_of_every_part():
    """A region's own deny log may hold FOREIGN_DENY entries (other regions' cards): a part
    keeps its owned cards' entries, renumbered, and learns the foreign ones again from their
    issuers when it joins."""
    from types import SimpleNamespace

    from onecard.core.state import DENY_FOREIGN, DENY_REMOVED
    from onecard.switch.commands import split

    plan = SimpleNamespace(card_map=np.array([1, -1, 0]))
    log = np.array([0, DENY_FOREIGN | 2, 2 | DENY_REMOVED, 1, DENY_FOREIGN | DENY_REMOVED | 0],
                   dtype=np.uint32)
    assert split._deny_log(log, plan).tolist() == [1, DENY_REMOVED]
