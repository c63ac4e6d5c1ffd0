"""Group commit to the PostgreSQL store, several commits in flight, fenced by the lease.

The event loop hands records over exactly as it does to the SQLite writer
(``core/commit.pyx``; the same attributes feed /metrics and the server): ``submit`` once per
loop iteration, ``durable_no`` read when the eventfd fires. Here ``commits_in_flight``
worker threads each own a connection and take whatever records are pending when they are
free, so while one commit waits for the synchronous standby the next is already on its way;
``durable_no`` only moves over the contiguous prefix of finished commits, so replies still
leave in commit order. psycopg releases the GIL while it waits on the socket; the workers
hold it only to build a statement and to read its one-row answer.

Every row is written by one statement that locks the lease row at the switch's epoch
``FOR SHARE`` (``lease.py``: fencing) and inserts the row unless its first record number is
taken, and says which happened. Taking a row lock gives the transaction an id and a WAL
record, so even a commit that inserted nothing returns only once a synchronous standby has
flushed it, and with it everything this server committed before: a row found already there
is then known to be on a standby too. That makes the same statement the answer to a commit
whose outcome is unknown (the connection died during it, or it took longer than
``commit_timeout_s``): reconnect through the multi-host DSN to whichever server is primary
now, send it again, and learn whether the row is there, was written now, or the lease moved
on (fenced: stop). Meanwhile nothing past that row is durable, so no reply depending on it
leaves; after ``failover_timeout_s`` without a primary the writer stops and the switch fails.
A commit is never cancelled: PostgreSQL answers a cancelled wait for the standby with the
commit already made locally, which is exactly the acknowledgement this must never take.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Final

import numpy as np

from onecard.core.commit import LATENCY_BOUNDS_US, SIZE_BOUNDS
from onecard.core.journal import FORMAT, Journal
from onecard.protocols.journal_codec import RECORD_DTYPE, day_runs, row_index
from onecard.switch.errors import CommitFailed
from onecard.switch.store.pg.connect import (
    APPLICATION_NAME,
    CONNECT_TIMEOUT_S,
    one_line,
    one_row,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("onecard.pg")

RECORD_BYTES: Final = RECORD_DTYPE.itemsize
ROW_RECORDS_MAX: Final = 1 << 20                 # a row is at most 80 MiB
RETRY_PAUSE_S: Final = 0.25                      # between attempts to find the primary
WATCH_INTERVAL_S: Final = 0.1

# l: the lease at our epoch, locked; ins: the row, unless that record number is taken;
# then whether a row already there holds exactly these records (a retried commit).
# (The records are one parameter, sent once, in binary.)
COMMIT_SQL: Final = """
WITH v AS (SELECT %(first_no)s::bigint AS first_no, %(n)s::int AS n, %(records)b::bytea AS recs),
l AS (SELECT epoch FROM lease WHERE epoch = %(epoch)s FOR SHARE),
ins AS (INSERT INTO journal (first_no, n, ts_us, records, format, day, kinds)
        SELECT v.first_no, v.n, %(ts_us)s, v.recs, %(format)s, %(day)s, %(kinds)s FROM v, l
        ON CONFLICT (first_no) DO NOTHING RETURNING first_no)
SELECT (SELECT count(*) FROM l), (SELECT count(*) FROM ins),
       (SELECT j.n = v.n AND j.records = v.recs FROM journal j, v
        WHERE j.first_no = v.first_no)"""


def _bucket(bounds: tuple[int, ...], value: int) -> int:
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds)


class PgCommitter:
    """Owns the writer connections and the records on their way to them."""

    def __init__(self, dsn: str, eventfd: int, next_no: int, epoch: int, *,
                 in_flight: int = 2, commit_timeout_s: float = 10.0,
                 failover_timeout_s: float = 60.0) -> None:
        assert 1 <= in_flight <= 16, in_flight
        assert commit_timeout_s > 0 and failover_timeout_s > 0
        self._dsn = dsn
        self._efd = eventfd
        self.epoch = epoch
        self._in_flight = in_flight
        self._commit_timeout_s = commit_timeout_s
        self._failover_timeout_s = failover_timeout_s
        self._cond = threading.Condition()
        self._pending = bytearray()
        self._pending_first = next_no
        self._finished: dict[int, int] = {}          # first_no -> end, beyond durable_no
        # worker -> (its socket, monotonic start) while a statement is on the wire
        self._on_wire: dict[int, tuple[int, float]] = {}
        self._stopping = False
        self._error: str | None = None
        self.durable_no = self.submitted_no = next_no
        self.latency = np.zeros(len(LATENCY_BOUNDS_US) + 1, dtype=np.uint64)
        self.sizes = np.zeros(len(SIZE_BOUNDS) + 1, dtype=np.uint64)
        self.latency_sum_us = self.records = self.commits = 0
        self.unknown_outcomes = 0          # commits resolved after their connection was lost
        self.resolving = 0                 # commits being resolved now (a failover?)
        self.timeouts = 0                  # connections cut for a commit over commit_timeout_s
        # The SQLite writer's WAL and disk-full counters: always 0 here.
        self.full_retries = self.wal_frames = self.wal_restarts = 0
        self.catch_ups = self.catch_up_us_sum = 0

    # ---- the event loop's side ---------------------------------------------------------------

    def submit(self, journal: Journal) -> int:
        """Move the journal's pending records to the writers; the number the next record will
        get (what a batch answered now must wait for)."""
        if not journal.pending:
            return self.submitted_no
        return self.submit_records(*journal.take())

    def submit_records(self, first: int, data: bytes) -> int:
        """Records already taken from the journal: packed, numbered from ``first``."""
        if first != self.submitted_no:
            raise RuntimeError("journal records were taken by someone else")
        assert data and len(data) % RECORD_BYTES == 0, len(data)
        with self._cond:
            self._pending += data
            self._cond.notify()
        self.submitted_no += len(data) // RECORD_BYTES
        return self.submitted_no

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def failure(self) -> str | None:
        """Why the writers stopped with records not durable, if they did."""
        return self._error

    def full_error(self) -> None:
        return None                        # PostgreSQL's disk is the server's to watch

    def request_catch_up(self) -> None:   # the SQLite WAL's; nothing to do here
        pass

    # ---- the writer threads ------------------------------------------------------------------

    def run(self) -> None:
        """The writer: starts the workers, cuts connections whose commit is overdue, returns
        once they have all stopped (after stop(), everything submitted durable; or failed)."""
        workers = [threading.Thread(target=self._worker, args=(i,), daemon=True,
                                    name=f"onecard-pg-commit-{i}")
                   for i in range(self._in_flight)]
        for w in workers:
            w.start()
        while any(w.is_alive() for w in workers):
            workers[0].join(WATCH_INTERVAL_S)
            self._cut_overdue()
        for w in workers:
            w.join()

    def _cut_overdue(self) -> None:
        # Shut the socket down under the worker (it gets a connection error and resolves the
        # commit on whichever server is primary): a paused primary, or one whose standbys
        # are gone, would otherwise hold the commit for ever.
        now = time.monotonic()
        with self._cond:
            for i, (fd, started) in list(self._on_wire.items()):
                if now - started < self._commit_timeout_s:
                    continue
                del self._on_wire[i]
                self.timeouts += 1
                log.warning("commit on connection %d took over %.1f s: cutting it, the outcome "
                            "is resolved on the primary", i, self._commit_timeout_s)
                try:
                    with socket.socket(fileno=os.dup(fd)) as s:
                        s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass                                  # already closed

    def _take(self) -> tuple[int, bytes] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._stopping or self._error)
            if self._error is not None or not self._pending:
                return None
            cut = min(len(self._pending), ROW_RECORDS_MAX * RECORD_BYTES)
            runs = day_runs(np.frombuffer(self._pending, dtype=RECORD_DTYPE,
                                          count=cut // RECORD_BYTES))
            if len(runs) > 1:              # a row holds one calendar day (journal_codec)
                cut = int(runs[1]) * RECORD_BYTES
            first, data = self._pending_first, bytes(self._pending[:cut])
            del self._pending[:cut]
            self._pending_first += cut // RECORD_BYTES
            return first, data

    def _worker(self, i: int) -> None:
        conn = None
        try:
            while (group := self._take()) is not None:
                started = time.monotonic()
                conn = self._commit(i, conn, *group)
                self._finish(group[0], len(group[1]) // RECORD_BYTES,
                             int((time.monotonic() - started) * 1e6))
        except CommitFailed as exc:
            self._fail(str(exc))
        except Exception as exc:                         # a bug: stop rather than guess
            log.exception("PostgreSQL writer %d", i)
            self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            if conn is not None:
                conn.close()

    def _fail(self, message: str) -> None:
        with self._cond:
            if self._error is None:
                self._error = message
            self._cond.notify_all()
        os.eventfd_write(self._efd, 1)

    def _finish(self, first: int, n: int, latency_us: int) -> None:
        with self._cond:
            self._finished[first] = first + n
            end = self.durable_no
            while end in self._finished:
                end = self._finished.pop(end)
            self.latency[_bucket(LATENCY_BOUNDS_US, latency_us)] += 1
            self.sizes[_bucket(SIZE_BOUNDS, n)] += 1
            self.latency_sum_us += latency_us
            self.records += n
            self.commits += 1
            moved = end > self.durable_no
            self.durable_no = end
        if moved:
            os.eventfd_write(self._efd, 1)

    def _connect(self) -> psycopg.Connection:
        import psycopg

        conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                               application_name=f"{APPLICATION_NAME}-commit")
        # The durability contract: COMMIT returns once a synchronous standby flushed it.
        (level,) = one_row(conn.execute("SHOW synchronous_commit"))
        if level != "remote_apply":
            conn.execute("SET synchronous_commit = on")
        return conn

    def _commit(self, i: int, conn: psycopg.Connection | None, first: int,
                data: bytes) -> psycopg.Connection:
        """Make the row durable (retrying on whichever server is primary) or raise
        CommitFailed; the connection to use next."""
        import psycopg

        day, kinds = row_index(np.frombuffer(data, dtype=RECORD_DTYPE))
        params = {"epoch": self.epoch, "first_no": first, "n": len(data) // RECORD_BYTES,
                  "ts_us": time.time_ns() // 1000, "records": data, "format": FORMAT,
                  "day": day, "kinds": kinds}
        deadline = None
        why = ""
        while True:
            if deadline is not None and time.monotonic() > deadline:
                self._resolving(-1)
                raise CommitFailed(f"no PostgreSQL primary took the commit of records from "
                                   f"{first} within {self._failover_timeout_s:.0f} s: {why}")
            try:
                if conn is None:
                    conn = self._connect()
                with self._cond:
                    self._on_wire[i] = (conn.pgconn.socket, time.monotonic())
                try:
                    locked, inserted, same = one_row(conn.execute(COMMIT_SQL, params))
                finally:
                    with self._cond:
                        self._on_wire.pop(i, None)
                if self._outcome(conn, first, locked, inserted, same, deadline):
                    if deadline is not None:
                        self._resolving(-1)
                    return conn
                why = "the row was being written by a statement cut earlier"
            except psycopg.OperationalError as exc:
                why = one_line(exc)
                if conn is not None:
                    conn.close()
                    conn = None
                if deadline is None:
                    log.warning("commit of records from %d: outcome unknown (%s); resolving "
                                "it on the primary", first, why)
            if deadline is None:
                deadline = time.monotonic() + self._failover_timeout_s
                self._resolving(+1)
            time.sleep(RETRY_PAUSE_S)

    def _resolving(self, change: int) -> None:
        with self._cond:
            self.resolving += change

    def _outcome(self, conn: psycopg.Connection, first: int, locked: int, inserted: int,
                 same: bool | None, retried: float | None) -> bool:
        """Whether the row is durable now; False: send the statement again."""
        if not locked:
            raise CommitFailed(f"fenced: another switch took over the PostgreSQL store (lease "
                               f"epoch no longer {self.epoch}); records from {first} are not "
                               "committed and will not be answered")
        if inserted:
            if retried is not None:
                self.unknown_outcomes += 1
                log.warning("commit of records from %d made on %s after a lost connection",
                            first, conn.info.host)
            return True
        if same:
            self.unknown_outcomes += 1
            log.warning("commit of records from %d was made before its connection was lost "
                        "(found on %s)", first, conn.info.host)
            return True
        if same is None:
            # Not inserted and not there: the insert waited for a transaction that inserted
            # the same number and committed after this statement's snapshot was taken (a cut
            # connection's statement, still running on the server). Look again.
            return False
        raise CommitFailed(f"journal row {first} on the PostgreSQL store holds other records "
                           "than this switch decided: another writer, stopping")
