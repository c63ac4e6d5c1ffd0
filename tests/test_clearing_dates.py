"""Clearing reads a date's records only (issue 28): journal rows of one calendar day each,
indexed by day and kinds, written so by both committers and by the migration of older rows;
clearing a date from its rows (and their bounded context) gives exactly what the whole
journal gives; memory is the date's, not the journal's."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import random
import sqlite3
import tracemalloc

import numpy as np
import pytest
from test_clearing import REF, rec

from onecard.core.commit import GroupCommitter
from onecard.protocols import clearing, journal_codec
from onecard.protocols.journal import KIND_BY_NAME
from onecard.protocols.journal_codec import unpack, view
from onecard.switch.clearing import exceptions, reader
from onecard.switch.clearing.positions import legs, positions, summarise
from onecard.switch.clearing.reader import registry
from onecard.switch.store import dataset, sqlite

from conftest import World
from test_invariants import Traffic

CST = clearing.CST
MIDNIGHT_US = int(dt.datetime(2026, 12, 1, 0, 0, tzinfo=CST).timestamp() * 1e6)


def journal_db(tmp_path, name: str = "j.db") -> sqlite3.Connection:
    conn = sqlite.connect(tmp_path / name)
    sqlite.create_schema(conn)
    return conn


def write_rows(conn: sqlite3.Connection, recs: np.ndarray, first_no: int = 0,
               row_records: int = 1024) -> None:
    """As the committer writes them: rows of at most row_records, one calendar day each."""
    conn.execute("BEGIN")
    cuts = [*journal_codec.day_runs(recs).tolist(), len(recs)]
    for lo, hi in itertools.pairwise(cuts):
        for a in range(lo, hi, row_records):
            b = min(a + row_records, hi)
            day, kinds = journal_codec.row_index(recs[a:b])
            conn.execute("INSERT INTO journal VALUES (?, ?, 0, ?, ?, ?, ?)",
                         (first_no + a, b - a, recs[a:b].tobytes(), journal_codec.FORMAT, day,
                          kinds))
    conn.execute("COMMIT")


def rows_of(conn: sqlite3.Connection) -> reader.RowsOfDays:
    return lambda a, b, k: sqlite.rows_of_days(conn, a, b, k)


def commit_with_sqlite(path, recs: np.ndarray) -> None:
    """Records through the SQLite group committer (core/commit.pyx), as a switch commits."""
    import threading

    from onecard.core.journal import Journal

    efd = os.eventfd(0)
    committer = GroupCommitter(str(path), efd, 1)
    writer = threading.Thread(target=committer.run)
    writer.start()
    j = Journal(1)
    j.extend_for_test(recs.tobytes())
    committer.submit(j)
    committer.stop()
    writer.join(10)
    os.close(efd)
    assert committer.durable_no == 1 + len(recs), committer.failure()


def crossing_midnight() -> np.ndarray:
    times = [MIDNIGHT_US - 2, MIDNIGHT_US - 1, MIDNIGHT_US, MIDNIGHT_US + 5]
    kinds = ["PURCHASE", "TAP", "ADJUSTMENT", "PURCHASE"]
    return np.concatenate([rec(k, 1, ts_us=t) for k, t in zip(kinds, times, strict=True)])


def assert_indexed(rows: list[tuple]) -> None:
    """Each row of one calendar day, its kinds the bit mask of its records'."""
    for blob, day, kinds in rows:
        recs = unpack(bytes(blob))
        assert set(journal_codec.calendar_days(recs["ts_us"]).tolist()) == {day}
        assert kinds == journal_codec.kinds_mask(recs["kind"])


def test_the_committer_cuts_its_rows_at_midnight_and_indexes_them(tmp_path):
    """One submit whose records cross midnight (China time) becomes two rows, each of one
    calendar day, with the kinds present; reading a day gives that day's rows and any row
    without a day (one a writer that does not index wrote: never lost to a date)."""
    conn = journal_db(tmp_path)
    conn.execute("INSERT INTO journal (first_no, n, ts_us, records, format) VALUES "
                 "(0, 1, 0, ?, 3)", (rec("PURCHASE", 5, ts_us=MIDNIGHT_US - 10**11).tobytes(),))
    commit_with_sqlite(tmp_path / "j.db", crossing_midnight())
    rows = conn.execute("SELECT first_no, n, day FROM journal ORDER BY first_no").fetchall()
    before = int(journal_codec.calendar_days(np.array([MIDNIGHT_US - 1]))[0])
    assert rows == [(0, 1, None), (1, 2, before), (3, 2, before + 1)]
    assert_indexed(conn.execute("SELECT records, day, kinds FROM journal WHERE day IS NOT NULL"
                                ).fetchall())
    assert [f for f, _ in sqlite.rows_of_days(conn, before + 1, before + 1)] == [0, 3]
    adjustment = 1 << KIND_BY_NAME["ADJUSTMENT"].value
    assert [f for f, _ in sqlite.rows_of_days(conn, before - 5, before + 5, adjustment)] == [0, 3]
    assert [f for f, _ in sqlite.rows_of_days(conn, before - 9, before - 8)] == [0]


def test_the_schema_5_migration_cuts_older_rows_by_day(tmp_path, demo_dir):
    """A data set at schema 4 (rows without a day, one across midnight) is indexed by the
    migration: the records and their numbers as they were, each row of one day."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    db = sqlite.db_path(data)
    conn = sqlite.connect(db)
    conn.execute("DROP INDEX journal_day")
    conn.execute("ALTER TABLE journal DROP COLUMN day")
    conn.execute("ALTER TABLE journal DROP COLUMN kinds")
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    end = sqlite.journal_end(conn)
    recs = crossing_midnight()
    conn.execute("INSERT INTO journal VALUES (?, ?, 7, ?, 3)", (end, len(recs), recs.tobytes()))
    before, _ = sqlite.journal_records(conn)
    conn.close()
    assert dataset.migrate(db) == [5]
    conn = sqlite.connect(db, readonly=True)
    after, nos = sqlite.journal_records(conn)
    assert after.tobytes() == before.tobytes() and np.array_equal(nos, np.arange(len(nos)))
    assert conn.execute("SELECT count(*) FROM journal WHERE first_no >= ?", (end,)
                        ).fetchone() == (2,)
    assert_indexed(conn.execute("SELECT records, day, kinds FROM journal").fetchall())
    conn.close()


def _discounts_within_the_window(recs: np.ndarray) -> None:
    """Spread over 40 hours, a discounted tap's previous ride can land hours before it,
    which no gate allows (the window is minutes): such discounts are taken back, as clearing
    reads rides of the TRANSFER_S before a date only."""
    from onecard.switch.clearing.apportion import TAP_KINDS, ride_ends

    tap = view(recs, "tap")
    discounted = np.isin(recs["kind"], TAP_KINDS) & (tap["transfer_discount_fen"] > 0)
    ends = ride_ends(recs)
    for i in np.flatnonzero(discounted).tolist():
        before = np.flatnonzero(ends[:i] & (recs["account"][:i] == recs["account"][i]))
        if not len(before) or recs["ts_us"][i] - recs["ts_us"][before[-1]] > (
                reader.TRANSFER_S * 10**6):
            tap["transfer_discount_fen"][i] = 0


@pytest.fixture(scope="module")
def traffic_journal(demo_dir, terminals, tmp_path_factory):
    """A seeded run of every kind of traffic (test_invariants.Traffic: purchases, voids,
    reversals, settlements with uploads, taps with transfers, medical bills and totals,
    adjustments, credits), its records spread over 40 hours across two cut-overs and
    midnights, journaled in rows of one day: (the SQLite journal, its records, registry)."""
    world = World(demo_dir, terminals)
    traffic = Traffic(world, random.Random(5))
    for _ in range(700):
        traffic.step()
    _, data = world.engine.journal.take()
    recs = unpack(data).copy()
    start = MIDNIGHT_US - 30 * 3600 * 10**6                 # 2026-11-29 18:00
    recs["ts_us"] = start + np.arange(len(recs)) * (40 * 3600 * 10**6 // len(recs))
    _discounts_within_the_window(recs)
    conn = journal_db(tmp_path_factory.mktemp("traffic"))
    write_rows(conn, recs, row_records=50)
    src = sqlite.connect(sqlite.db_path(demo_dir), readonly=True)
    ref = registry(src, world.state.cards["pan"], world.state.cards["region"])
    src.close()
    return conn, recs, ref


def test_a_date_read_by_its_rows_clears_as_the_whole_journal_does(traffic_journal):
    """For every date: the same legs (positions and files come from them) and the same
    exceptions from the date's rows and their context as from every record."""
    conn, recs, ref = traffic_journal
    nos = np.arange(len(recs))
    days = np.unique(clearing.settlement_days(recs["ts_us"], 23 * 60))
    assert len(days) >= 3
    seen = journeys = 0
    for day in days.tolist():
        date = clearing.day_date(day)
        got, got_nos = reader.read_dates(rows_of(conn), date, date, clearing.CUTOVER_DEFAULT)
        assert len(got) < len(recs)
        want_legs, got_legs = legs(recs, nos, ref, date), legs(got, got_nos, ref, date)
        assert summarise(got_legs, date, "23:00") == summarise(want_legs, date, "23:00")
        for name in ("party", "signed", "fee"):
            assert np.array_equal(getattr(got_legs, name), getattr(want_legs, name))
        assert np.array_equal(got_nos[got_legs.row], nos[want_legs.row])
        found = exceptions.find(got, got_nos, ref, date)
        assert found == exceptions.find(recs, nos, ref, date)
        seen += len(found)
        journeys += len(got_legs.journeys.second)
    assert seen and journeys           # batches, uploads and transfers were in play


def synthetic_day(day_index: int, n: int) -> np.ndarray:
    """n purchases spread over one calendar day, on the cards and shops of test_clearing."""
    rng = np.random.default_rng(day_index)
    base = rec("PURCHASE", 1)
    out = np.repeat(base, n)
    out["ts_us"] = (MIDNIGHT_US + day_index * 86_400 * 10**6
                    + np.sort(rng.integers(0, 86_400 * 10**6 - 3_600 * 10**6, n)))
    out["amount_fen"] = rng.integers(1, 100_000, n)
    out["card"] = rng.integers(0, len(REF.card_province), n)
    return out


def peak_bytes(conn: sqlite3.Connection, date: dt.date) -> int:
    tracemalloc.start()
    try:
        recs, nos = reader.read_dates(rows_of(conn), date, date, clearing.CUTOVER_DEFAULT)
        day = positions(recs, nos, REF, date)
        assert day.records == 1_000_000
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_clearing_a_date_uses_the_dates_memory_not_the_journals(tmp_path):
    """1M records on the date; the same date with 9M more records of nine other days behind
    and after it in the journal: clearing it takes no more memory than alone, within a fixed
    bound (the rows read and dropped one at a time)."""
    date = (dt.datetime.fromtimestamp(MIDNIGHT_US / 1e6, CST) + dt.timedelta(days=5)).date()
    alone, full = journal_db(tmp_path, "alone.db"), journal_db(tmp_path, "full.db")
    first_no = 0
    for day_index in range(10):
        recs = synthetic_day(day_index, 1_000_000)
        write_rows(full, recs, first_no)
        if day_index == 5:
            write_rows(alone, recs, first_no)
        first_no += len(recs)
    bound = 16 << 20
    peak_alone, peak_full = peak_bytes(alone, date), peak_bytes(full, date)
    assert peak_full <= peak_alone + bound, (peak_alone, peak_full)
