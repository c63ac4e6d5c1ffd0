"""The journal record format is declared once (protocols/journal.py): the compiled structs,
the numpy dtypes, the typed reader and JOURNAL.md all come from that table, every kind the
core writes reads back by name with the values it was written with, and a data directory
written by a version-1 build recovers exactly."""

import datetime as dt
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

from onecard.core import crypto, operations, records
from onecard.core.state import (
    CARD_LOST,
    SCOPE_LODGING,
    TERM_BUS_READER,
    TERM_KIOSK,
    TERM_MEDICAL,
    TERM_METRO_GATE,
    TERM_VENUE,
    TERM_VERIFIER,
)
from onecard.protocols import journal, journal_codec, journal_render, native
from onecard.protocols.journal_codec import RECORD_DTYPE, upgrade
from onecard.switch.admin import disbursements
from onecard.switch.store import loader, sqlite
from onecard.switch.terminals import read_terminals

from conftest import start_switch
from termsim import NativeTerminal, socket_exchange
from test_replay import comparable, native_at

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "journal-v1.tar.xz"
DAYS_1970_TO_2000 = 10957
CST = dt.timezone(dt.timedelta(hours=8))


def test_derived_files_are_what_the_table_gives():
    stale = journal_render.stale(ROOT)
    assert stale == [], f"run: python -m onecard.protocols.journal_render ({stale})"


def test_compiled_structs_numpy_dtypes_and_table_agree():
    assert records.RECORD_BYTES == journal.RECORD_BYTES == journal_codec.RECORD_DTYPE.itemsize
    assert set(records.LAYOUT) == set(journal.LAYOUTS) == set(journal_codec.DTYPES)
    for layout, compiled in records.LAYOUT.items():
        dtype = journal_codec.DTYPES[layout]
        assert dtype.itemsize == journal.RECORD_BYTES
        assert list(compiled) == list(dtype.names)
        for name, (offset, size) in compiled.items():
            assert dtype.fields[name][1] == offset, (layout, name)
            assert dtype.fields[name][0].itemsize == size, (layout, name)
    # every byte of a record belongs to a field of the generic dtype, so copies keep it
    covered = sum(f[0].itemsize for f in journal_codec.RECORD_DTYPE.fields.values())
    assert covered == journal.RECORD_BYTES


def test_the_documentation_names_every_field_and_kind():
    text = (ROOT / "protocols" / "JOURNAL.md").read_text()
    for fields in [journal.HEAD, *journal.LAYOUTS.values()]:
        for f in fields:
            assert f"`{f.name}`" in text
    for kind in journal.KINDS:
        assert f"`{kind.name}`" in text


def decode_last(world, n: int = 1) -> list:
    first, blob = world.engine.journal.take()
    return journal_codec.decode(journal_codec.unpack(blob), first)[-n:]


def test_every_kind_reads_back_by_name(world):
    """Written by the compiled core, read by the Python reader: the values the request
    carried and the after-images the state now holds."""
    accounts, cards = world.state.accounts, world.state.cards
    today = (dt.datetime.now(CST).date() - dt.date(1970, 1, 1)).days - DAYS_1970_TO_2000
    pos = world.iso()
    (signon,) = decode_last(world)
    assert signon.kind_name == "SIGNON" and signon.mac_alg == pos.info.mac_alg
    pan, idx = world.card(nth=3)
    account = int(cards["account"][idx])
    stan = pos.next_stan()
    assert pos.send(pos.purchase(pan, 1234, stan=stan))[0]["39"] == "00"
    (p,) = decode_last(world)
    assert (p.kind_name, p.amount_fen, p.amount_asked_minor, p.currency) == (
        "PURCHASE", 1234, 1234, 156)
    assert (p.card, p.account, p.daily_day) == (idx, account, today)
    assert p.balance_fen_after == world.balance(idx)
    assert p.daily_spent_fen_after == accounts["daily_spent_fen"][account]
    (void,) = pos.send(pos.void(pan, 1234, stan))
    (v,) = decode_last(world)
    assert (v.kind_name, v.orig_seq, v.amount_fen) == ("VOID", int(stan), 1234)
    pos.send(pos.void_reversal(pan, 1234, void["11"]))
    assert decode_last(world)[0].kind_name == "VOID_REVERSAL"
    pos.send(pos.balance(pan))
    assert decode_last(world)[0].kind_name == "BALANCE"
    pos.send(pos.settlement(1234, 1, 0, 0, batch=1))
    (s,) = decode_last(world)
    assert (s.kind_name, s.amount_fen, s.debit_fen, s.debit_count, s.credit_count) == (
        "SETTLE", 0, 1234, 1, 0)
    assert (s.result, s.batch_no_next) == (1, 2)

    gate = next(t for t in world.terminals if t.kind == TERM_METRO_GATE and t.province == 31)
    g = native_at(world, TERM_METRO_GATE)
    g.send([g.tap(pan, gate.station_id)])
    (tap,) = decode_last(world)
    assert (tap.kind_name, tap.station_id, tap.direction) == ("TAP", gate.station_id, 0)
    assert tap.trip_station_after == cards["trip_station"][idx] > 0
    assert tap.trip_started_s_after == cards["trip_time_s"][idx] > 0
    bus = native_at(world, TERM_BUS_READER)
    when = int(dt.datetime.now().timestamp()) - 600
    bus.send([native.OfflineTap(50_000, pan, 0, native.TAP_IN, when)])
    (off,) = decode_last(world)
    assert (off.kind_name, off.last_ride_s_after) == ("OFFLINE_TAP", when)
    assert off.last_ride_s_after == accounts["last_ride_s"][account]

    hotel = native_at(world, TERM_VERIFIER, "hotel")
    hotel.send([hotel.verify(pan)])
    (ver,) = decode_last(world)
    assert (ver.kind_name, ver.scope) == ("VERIFY", SCOPE_LODGING)
    kiosk = native_at(world, TERM_KIOSK)
    kiosk.send([native.TopUp(kiosk.next_seq(), pan, 5_000)])
    (top,) = decode_last(world)
    assert (top.kind_name, top.amount_asked_fen, top.amount_fen) == ("TOPUP", 5_000, 5_000)
    scenic = native_at(world, TERM_VENUE, "scenic spot")
    scenic.send([native.VenueEntry(scenic.next_seq(), pan)])
    (ven,) = decode_last(world)
    policy = world.state.terminals["policy"][scenic.info.idx]
    assert (ven.kind_name, ven.base_fen) == ("VENUE", world.state.policies["base_fen"][policy])
    assert ven.base_fen > 0

    doctor = native_at(world, TERM_MEDICAL, "hospital")
    seq = doctor.next_seq()
    (paid,) = doctor.send([native.Medical(seq, pan, 250_000)])
    (m,) = decode_last(world)
    assert (m.kind_name, m.bill_fen, m.year) == ("MEDICAL", 250_000, dt.datetime.now(CST).year)
    assert (m.pool_fen, m.personal_fen, m.amount_fen) == (
        paid.pool_fen, paid.personal_fen, paid.cash_fen)
    assert m.medical_fen_after == accounts["medical_fen"][account]
    assert world.state.medical_year.get(account)[1] == m.pool_paid_fen_after
    doctor.send([native.MedicalRefund(doctor.next_seq(), pan, seq)])
    (refund,) = decode_last(world)
    assert (refund.kind_name, refund.orig_seq, refund.bill_fen) == ("MEDICAL_REFUND", seq,
                                                                     250_000)

    a = world.engine.authoriser
    operations.disburse(a, 3, 202612, np.array([int(pan)], dtype=np.uint64),
                        np.array([777], dtype=np.int64), 5)
    (c,) = decode_last(world)
    assert (c.kind_name, c.programme, c.period, c.operator, c.amount_fen) == (
        "CREDIT", 3, 202612, 5, 777)
    operations.card_change(a, idx, status=CARD_LOST, operator=4)
    (ca,) = decode_last(world)
    # The card number is enciphered in the record (format 3): it deciphers with the journal key.
    assert ca.pan != int(pan)
    assert crypto.pan_crypt(world.keys.journal_key, ca.pan, idx, int(cards["account"][idx]),
                            decrypt=True) == int(pan)
    assert (ca.kind_name, ca.status, ca.operator) == ("CARD_ADMIN", CARD_LOST, 4)
    assert ca.action == journal.CARD_ADMIN["CHANGE"]
    assert (ca.region, ca.expiry_yymm) == (cards["region"][idx], cards["expiry_yymm"][idx])


def test_an_unknown_format_is_refused_by_name():
    with pytest.raises(ValueError, match="format 7 is not known"):
        journal_codec.upgrade(b"\0" * 80, 7)
    with pytest.raises(ValueError, match="not a whole number"):
        journal_codec.unpack(b"\0" * 81)


@pytest.fixture
def v1_dir(tmp_path) -> Path:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "data"


def expected_v1_state(data: Path) -> dict:
    return comparable({p.stem: np.load(p) for p in sorted((data / "expected").glob("*.npy"))})


def test_a_version_1_journal_recovers_exactly_the_state_it_was_written_with(v1_dir):
    loaded = loader.load(v1_dir)
    assert loaded.replayed == 73                  # every record of the fixture, read as v1
    got = comparable(loaded.state.snapshot())
    want = expected_v1_state(v1_dir)
    # The idempotency horizon (added since) holds what the rings forgot while replaying: the
    # same requests the rings held, nothing the fixture's state lacks.
    horizon = {name: got.pop(name) for name in list(got) if name.startswith("horizon_")}
    assert int(horizon["horizon_gens"][:, 1].sum()) == len(horizon["horizon_rows"])
    assert int(horizon["horizon_rows_at"][:, 1].sum()) == len(horizon["horizon_rows"])
    # Other state added since the fixture was written (stand-in maps) is empty for its records.
    assert all(len(got.pop(name)) == 0 for name in set(got) - set(want))
    assert sorted(got) == sorted(want)
    for name in want:
        g, w = got[name], want[name]
        if g.dtype != w.dtype:
            # A field added since the fixture was written (a terminal's session_day, in its
            # padding) is zero for its records: not recorded then.
            added = set(g.dtype.names) - set(w.dtype.names)
            # ... but for whether a batch may be uploaded, which replay derives from the
            # records of 0500s answered "not balanced": only a terminal that settled has it
            if "upload_open" in added:
                added.discard("upload_open")
                assert g["upload_open"].any() and not (g["upload_open"]
                                                       & (g["batch_no"] == 0)).any()
            assert all(not g[f].any() for f in added), (name, added)
            common = [f for f in w.dtype.names if f in g.dtype.names and f != "pad"]
            g, w = g[common], w[common]
            assert all(np.array_equal(g[f], w[f]) for f in common), f"{name} differs"
            continue
        assert np.array_equal(g, w), f"{name} differs"
    conn = sqlite.connect(sqlite.db_path(v1_dir), readonly=True)
    try:
        assert sqlite.schema_version(conn) == sqlite.SCHEMA_VERSION
        # The migration to schema 4 rewrote the version-1 rows as version 3: the only rows
        # ever rewritten, to encipher their card numbers (sqlite.py).
        assert conn.execute("SELECT DISTINCT format FROM journal").fetchall() == [(3,)]
        recs, nos = sqlite.journal_records(conn)
    finally:
        conn.close()
    by_kind = {}
    for rec in journal_codec.decode(recs, nos):
        by_kind.setdefault(rec.kind_name, []).append(rec)
    # values drive() sent, read back through the version-1 reader by name
    assert {r.amount_asked_minor for r in by_kind["PURCHASE"]} >= {1234, 1500}
    assert {r.currency for r in by_kind["PURCHASE"]} == {156}
    assert {r.bill_fen for r in by_kind["MEDICAL"]} == {250_000}
    assert {r.scope for r in by_kind["VERIFY"]} == {SCOPE_LODGING}
    assert [r.amount_asked_fen for r in by_kind["TOPUP"]] == [10_000]
    assert {(r.programme, r.period) for r in by_kind["CREDIT"]} >= {(1, 202611)}
    assert by_kind["SETTLE"][0].amount_fen == 0 and by_kind["SETTLE"][0].debit_fen > 0
    new = [r for r in by_kind["CARD_ADMIN"] if r.action == journal.CARD_ADMIN["NEW"]]
    assert [crypto.pan_crypt(loaded.keys.journal_key, r.pan, r.card, r.account, decrypt=True)
            for r in new] == [6211119999000000001]
    assert [r.pan for r in new] != [6211119999000000001]


def test_version_1_disbursements_are_reported_from_the_journal(v1_dir):
    loaded = loader.load(v1_dir)
    conn = sqlite.connect(sqlite.db_path(v1_dir))
    try:
        conn.execute("DELETE FROM disbursements")
        assert disbursements.sync_from_journal(conn, loaded.keys,
                                               loaded.state.cards["pan"]) == 4
        rows = conn.execute("SELECT programme, period, amount_fen, result FROM disbursements"
                            ).fetchall()
    finally:
        conn.close()
    assert rows == [(0, 202611, 12_000, "00")] * 4


@pytest.mark.slow
def test_a_switch_starts_on_a_version_1_data_directory_and_goes_on(v1_dir, tmp_path):
    """The version-1 rows are rewritten as version 3 (card numbers enciphered) by the store
    migration; the new rows are version 3; a restart recovers what the first run answered."""
    want = expected_v1_state(v1_dir)
    cards = want["cards"]
    conn = sqlite.connect(sqlite.db_path(v1_dir), readonly=True)
    regions = loader.regions_array(conn)
    conn.close()
    shanghai = regions["code"][cards["region"]] // 10000 == 31
    card = int(np.flatnonzero(shanghai & (cards["status"] == 0) & (cards["functions"] == 7)
                              & (cards["expiry_yymm"] > 3000))[0])
    pan = str(int(cards["pan"][card]))
    sw = start_switch(v1_dir)
    try:
        assert any("73 journal records replayed" in line for line in sw.output)
        assert any(f"upgraded to store schema {sqlite.SCHEMA_VERSION}" in line
                   for line in sw.output)
        info = next(t for t in read_terminals(v1_dir) if t.kind == TERM_KIOSK
                    and t.province == 31)
        sock, exchange = socket_exchange("127.0.0.1", sw.native, 4)
        kiosk = NativeTerminal(info, exchange, seq=1000)      # drive() used the first few
        assert kiosk.signon().rc == "00"
        (reply,) = kiosk.send([native.TopUp(kiosk.next_seq(), pan, 2_500)])
        assert reply.rc == "00"
        sock.close()
    finally:
        sw.kill9()
    conn = sqlite.connect(sqlite.db_path(v1_dir), readonly=True)
    try:
        formats = conn.execute("SELECT format, SUM(n) FROM journal GROUP BY format").fetchall()
        rows = conn.execute("SELECT first_no, records, format, day, kinds FROM journal"
                            ).fetchall()
    finally:
        conn.close()
    assert formats == [(3, 75)]                   # 73 rewritten, the sign-on and the top-up
    for _, blob, fmt, day, kinds in rows:     # schema 5: every row of one day, indexed
        recs = np.frombuffer(upgrade(blob, fmt), dtype=RECORD_DTYPE)
        assert set(journal_codec.calendar_days(recs["ts_us"]).tolist()) == {day}
        assert kinds == journal_codec.kinds_mask(recs["kind"])
    account = int(cards["account"][card])
    after = loader.load(v1_dir).state.accounts["balance_fen"][account]
    assert after == want["accounts"]["balance_fen"][account] + 2_500


# Packing that only the schema module may do: shifts of a value by a field width (a power of
# two written `1 << 40` is a size, not packing), masks of one field.
PACKING = re.compile(r"(?<!\b1 )<<\s*(16|32|40|48)\b|>>\s*(16|32|40|48)\b"
                     r"|&\s*(<int64_t>\s*)?0xffffffff\b")
JOURNAL_READERS = ("core/authorise.pyx", "core/authorise.pxd", "core/payments.pyx",
                   "core/services.pyx", "core/transit.pyx", "core/operations.pyx",
                   "core/ledger.pyx", "core/ledger.pxd", "core/decide.pyx", "core/journal.pyx",
                   "core/journal.pxd", "core/commit.pyx")


def test_no_journal_field_is_packed_by_hand_outside_the_schema():
    paths = [ROOT / p for p in JOURNAL_READERS]
    for folder in ("switch", "bench", "tests"):
        paths += sorted((ROOT / folder).rglob("*.py"))
    found = []
    for path in paths:
        for no, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if PACKING.search(code) and path.name != "test_journal_schema.py":
                found.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()}")
    assert found == [], "\n".join(found)


def test_the_fixture_is_what_its_maker_says(v1_dir):
    """The version-1 fixture must be a version-1 journal: its rows carry no format column."""
    conn = sqlite.connect(sqlite.db_path(v1_dir), readonly=True)
    try:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(journal)")]
        assert sqlite.schema_version(conn) == 2 and "format" not in columns
    finally:
        conn.close()
