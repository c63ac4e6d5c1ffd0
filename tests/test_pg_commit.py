"""The PostgreSQL group committer and the fencing lease (issue 14), against a throwaway
server: rows in order with several commits in flight, fencing after a takeover, commits
whose outcome is unknown, rows past a gap, the synchronous-standby requirement."""

from __future__ import annotations

import itertools
import os
import threading
import time

import numpy as np
import pytest

from onecard.switch.store.pg import lease as pg_lease
from onecard.switch.store.pg.committer import RECORD_BYTES, PgCommitter
from onecard.switch.store.pg.connect import PgError, connect
from onecard.switch.store.pg.migrate import migrate

from pg_fixtures import dsn, pg, psycopg  # noqa: F401  (fixtures)

WAIT_S = 30


@pytest.fixture
def store(dsn) -> str:
    conn = connect(dsn)
    migrate(conn)
    conn.close()
    return dsn


class Writer:
    """A committer running in its thread, fed from the world's engine."""

    def __init__(self, dsn: str, world, epoch: int, **options) -> None:
        self.efd = os.eventfd(0, os.EFD_NONBLOCK)
        self.world = world
        self.committer = PgCommitter(dsn, self.efd, world.engine.journal.next_no, epoch,
                                     **options)
        self.thread = threading.Thread(target=self.committer.run, daemon=True)
        self.thread.start()

    def purchases(self, count: int, amount_fen: int = 100) -> int:
        t = self.world.iso()
        pan, _ = self.world.card()
        t.send(*[t.purchase(pan, amount_fen) for _ in range(count)])
        return self.committer.submit(self.world.engine.journal)

    def wait(self, until_no: int) -> bool:
        deadline = time.monotonic() + WAIT_S
        while (self.committer.durable_no < until_no and self.committer.failure() is None
               and time.monotonic() < deadline):
            time.sleep(0.005)
        return self.committer.durable_no >= until_no

    def stop(self) -> None:
        self.committer.stop()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive()
        os.close(self.efd)


def rows(dsn: str) -> list[tuple[int, int, bytes]]:
    with psycopg.connect(dsn) as conn:
        return [(a, b, bytes(c)) for a, b, c in conn.execute(
            "SELECT first_no, n, records FROM journal ORDER BY first_no")]


def test_rows_are_contiguous_with_several_commits_in_flight(store, world):
    lease = pg_lease.take_over(store, require_sync=False, holder="t")
    assert (lease.epoch, lease.journal_end, lease.dropped_rows) == (1, 0, 0)
    w = Writer(store, world, lease.epoch, in_flight=3)
    ends = [w.purchases(5) for _ in range(20)]
    assert w.wait(ends[-1])
    w.stop()
    assert w.committer.failure() is None
    found = rows(store)
    assert found[0][0] == 0
    for (first, n, recs), (after, _, _) in itertools.pairwise(found):
        assert first + n == after and len(recs) == n * RECORD_BYTES
    assert found[-1][0] + found[-1][1] == ends[-1] == w.committer.records
    assert int(np.sum(w.committer.sizes)) == w.committer.commits == len(found)


def test_a_switch_whose_lease_was_taken_over_confirms_nothing_more(store, world):
    first = pg_lease.take_over(store, require_sync=False, holder="old")
    w = Writer(store, world, first.epoch)
    assert w.wait(w.purchases(3))
    durable = w.committer.durable_no
    second = pg_lease.take_over(store, require_sync=False, holder="new")
    assert second.epoch == first.epoch + 1 and second.previous_holder == "old"
    assert second.journal_end == durable
    w.purchases(3)
    w.thread.join(WAIT_S)
    assert "fenced" in w.committer.failure()
    assert w.committer.durable_no == durable                 # nothing more confirmed
    assert rows(store)[-1][0] + rows(store)[-1][1] == durable
    assert os.eventfd_read(w.efd) >= 1                       # the loop is told
    w.stop()


def decided(world) -> tuple[int, bytes]:
    """One purchase's journal records, taken from the engine as the loop would hand them over."""
    t = world.iso()
    pan, _ = world.card()
    t.send(t.purchase(pan, 100))
    return world.engine.journal.take()


def place(dsn: str, first: int, data: bytes) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO journal (first_no, n, ts_us, records, format) "
                     "VALUES (%s, %s, 0, %s, 3)",
                     (first, len(data) // RECORD_BYTES, data))


def committed_alone(dsn: str, epoch: int, first: int, data: bytes, **options) -> PgCommitter:
    """A committer given these records, run until they are durable or it failed."""
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    committer = PgCommitter(dsn, efd, first, epoch, **options)
    thread = threading.Thread(target=committer.run, daemon=True)
    thread.start()
    end = committer.submit_records(first, data)
    deadline = time.monotonic() + WAIT_S
    while (committer.durable_no < end and committer.failure() is None
           and time.monotonic() < deadline):
        time.sleep(0.005)
    committer.stop()
    thread.join(WAIT_S)
    os.close(efd)
    return committer


def test_a_row_committed_before_its_connection_was_lost_counts_once(store, world):
    lease = pg_lease.take_over(store, require_sync=False)
    first, data = decided(world)
    place(store, first, data)                 # as if the commit had landed, unanswered
    committer = committed_alone(store, lease.epoch, first, data)
    assert committer.failure() is None and committer.unknown_outcomes == 1
    assert committer.durable_no == first + len(data) // RECORD_BYTES
    assert rows(store) == [(first, len(data) // RECORD_BYTES, data)]     # not written twice


def test_other_records_under_the_same_number_stop_the_writer(store, world):
    lease = pg_lease.take_over(store, require_sync=False)
    first, data = decided(world)
    place(store, first, bytes(len(data)))
    committer = committed_alone(store, lease.epoch, first, data)
    assert "holds other records" in committer.failure()
    assert committer.durable_no == first


def test_a_commit_held_past_its_timeout_is_cut_and_resolved(store, world):
    lease = pg_lease.take_over(store, require_sync=False)
    first, data = decided(world)
    blocker = psycopg.connect(store)
    blocker.execute("SELECT 1 FROM lease FOR UPDATE")     # the commit's share lock waits
    threading.Timer(2.5, blocker.rollback).start()
    committer = committed_alone(store, lease.epoch, first, data, commit_timeout_s=1.0)
    blocker.close()
    assert committer.failure() is None and committer.timeouts >= 1
    assert committer.durable_no == first + len(data) // RECORD_BYTES
    assert rows(store) == [(first, len(data) // RECORD_BYTES, data)]


def test_no_primary_within_the_failover_timeout_fails_the_writer(world):
    first, data = decided(world)
    committer = committed_alone("host=127.0.0.1 port=1 user=x dbname=x connect_timeout=1", 1,
                                first, data, failover_timeout_s=1.0)
    assert "no PostgreSQL primary took the commit" in committer.failure()
    assert committer.durable_no == first


def test_takeover_deletes_rows_past_a_gap_and_keeps_the_prefix(store, world):
    pg_lease.take_over(store, require_sync=False)
    for first in (0, 10, 30, 40):             # 20..29 never committed
        place(store, first, bytes(10 * RECORD_BYTES))
    lease = pg_lease.take_over(store, require_sync=False)
    assert (lease.journal_end, lease.dropped_rows) == (20, 2)
    assert [r[0] for r in rows(store)] == [0, 10]


def test_a_store_without_a_synchronous_standby_is_refused_when_required(store):
    with pytest.raises(PgError, match="no synchronous standby"):
        pg_lease.take_over(store, require_sync=True)
    with psycopg.connect(store) as conn:
        assert conn.execute("SELECT epoch FROM lease").fetchone() == (0,)   # nothing taken


def test_an_unmigrated_store_is_refused_in_one_line(dsn):
    with pytest.raises(PgError, match="onecard db migrate"):
        pg_lease.take_over(dsn, require_sync=False)


def test_the_admin_connection_reconnects_between_statements_after_a_loss(store):
    from onecard.switch.store.pg.db import open_db

    db = open_db(store)
    assert db.execute("SELECT epoch FROM lease").fetchone() == (0,)
    with psycopg.connect(store, autocommit=True) as other:      # as a failover would
        other.execute("SELECT pg_terminate_backend(%s)", (db.pg.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError):
        db.execute("SELECT 1")                                  # the one that meets it
    assert db.execute("SELECT epoch FROM lease").fetchone() == (0,)
    db.execute("BEGIN")
    with psycopg.connect(store, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (db.pg.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError):
        db.execute("UPDATE lease SET holder = 'x'")
    with pytest.raises(psycopg.OperationalError):               # not inside the lost one
        db.execute("UPDATE lease SET holder = 'y'")
    db.execute("ROLLBACK")
    assert db.execute("SELECT holder FROM lease").fetchone() == ("",)
    db.close()


def test_a_fenced_adapter_writes_nothing_and_still_reads(store):
    from onecard.switch.store.pg.db import open_db

    lease = pg_lease.take_over(store, require_sync=False)
    stale = open_db(store, fence_epoch=lease.epoch)
    assert stale.execute("INSERT INTO meta VALUES ('a', '1')").rowcount == 1   # still ours
    pg_lease.take_over(store, require_sync=False, holder="another switch")
    for write in (lambda: stale.execute("INSERT INTO meta VALUES ('b', '2')"),
                  lambda: stale.executemany("INSERT INTO meta VALUES (?, ?)", [("c", "3")]),
                  lambda: stale.execute("BEGIN")):
        with pytest.raises(PgError, match="fenced"):
            write()
    assert stale.execute("SELECT key FROM meta WHERE key IN ('a', 'b', 'c')").fetchall() == \
        [("a",)]
    stale.close()


def test_rows_are_of_one_calendar_day_each_and_indexed(store):
    """Records across midnight (China time) become a row per day, with its kinds, as the
    SQLite committer writes them (clearing reads a date's rows by that index)."""
    from test_clearing_dates import assert_indexed, crossing_midnight

    lease = pg_lease.take_over(store, require_sync=False)
    recs = crossing_midnight()
    committer = committed_alone(store, lease.epoch, 0, recs.tobytes())
    assert committer.failure() is None and committer.durable_no == len(recs)
    with psycopg.connect(store) as conn:
        got = conn.execute("SELECT first_no, n FROM journal ORDER BY first_no").fetchall()
        assert got == [(0, 2), (2, 2)]
        assert_indexed(conn.execute("SELECT records, day, kinds FROM journal").fetchall())


def test_the_version_5_migration_cuts_rows_by_day(dsn):
    """A store at version 4 with a row across midnight: the migration to 5 indexes every row,
    the records and their numbers as they were."""
    from test_clearing_dates import assert_indexed, crossing_midnight

    from onecard.switch.store.pg.schema import MIGRATIONS

    recs = crossing_midnight()
    with psycopg.connect(dsn) as conn:
        for statement in MIGRATIONS[4]:
            conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '4')")
        conn.execute("INSERT INTO journal VALUES (0, %s, 7, %s, 3)", (len(recs), recs.tobytes()))
    conn = connect(dsn)
    assert migrate(conn) == [5]
    conn.close()
    with psycopg.connect(dsn) as conn:
        got = conn.execute("SELECT first_no, n, ts_us FROM journal ORDER BY first_no").fetchall()
        assert got == [(0, 2, 7), (2, 2, 7)]
        assert_indexed(conn.execute("SELECT records, day, kinds FROM journal").fetchall())
        joined = b"".join(bytes(r) for (r,) in conn.execute(
            "SELECT records FROM journal ORDER BY first_no"))
    assert joined == recs.tobytes()
