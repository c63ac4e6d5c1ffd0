"""The embedded store: one SQLite database (WAL) holding reference tables and the journal.

The journal is written by :class:`GroupCommitter`, a thread that takes every record the core
has appended since its last commit (from all connections at once), writes them as one packed
row, and commits with ``synchronous=FULL``; only then does the event loop release the replies
that depended on them. A row is ``(first_no, n, ts_us, records)`` where ``records`` is ``n``
64-byte records (``onecard.core.journal.JREC_DTYPE``) numbered from ``first_no``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from onecard.core.journal import JREC_DTYPE

log = logging.getLogger("onecard.store")

SCHEMA_VERSION = 1
DB_NAME = "onecard.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS regions (
    idx INTEGER PRIMARY KEY, code INTEGER NOT NULL UNIQUE, name_zh TEXT NOT NULL,
    name_en TEXT NOT NULL, province INTEGER NOT NULL, grp TEXT NOT NULL,
    elderly_age INTEGER NOT NULL, elderly_pct INTEGER NOT NULL, disabled_pct INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS operators (
    idx INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
    kind INTEGER NOT NULL, region_idx INTEGER NOT NULL REFERENCES regions(idx),
    flat_fare_fen INTEGER NOT NULL, fare_rule TEXT);
CREATE TABLE IF NOT EXISTS stations (
    id INTEGER PRIMARY KEY, operator_idx INTEGER NOT NULL REFERENCES operators(idx),
    line TEXT NOT NULL, name TEXT NOT NULL, km REAL NOT NULL);
CREATE TABLE IF NOT EXISTS catalogue (
    code TEXT PRIMARY KEY, name_zh TEXT NOT NULL, name_en TEXT NOT NULL, domain TEXT NOT NULL,
    app TEXT NOT NULL, functions INTEGER NOT NULL, scope TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS surnames (idx INTEGER PRIMARY KEY, surname TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS terminals (
    idx INTEGER PRIMARY KEY, tid TEXT NOT NULL UNIQUE, merchant TEXT NOT NULL,
    kind INTEGER NOT NULL, protocol INTEGER NOT NULL,
    region_idx INTEGER NOT NULL REFERENCES regions(idx), operator_idx INTEGER,
    station_id INTEGER, mac_alg INTEGER NOT NULL, permitted INTEGER NOT NULL,
    tmk BLOB NOT NULL, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cards (
    idx INTEGER PRIMARY KEY, pan TEXT NOT NULL UNIQUE, account INTEGER NOT NULL,
    holder_name TEXT NOT NULL, id_number TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    first_no INTEGER PRIMARY KEY, n INTEGER NOT NULL, ts_us INTEGER NOT NULL,
    records BLOB NOT NULL);
"""


def db_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / DB_NAME


def connect(path: str | Path, *, synchronous: str = "FULL",
            readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


def check_schema(conn: sqlite3.Connection, path: Path) -> None:
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None or int(row[0]) != SCHEMA_VERSION:
        found = row[0] if row else "none"
        raise RuntimeError(f"{path}: schema version {found}, this build needs {SCHEMA_VERSION}")


def journal_end(conn: sqlite3.Connection) -> int:
    """Number of the next journal record (records are numbered from 0 without gaps)."""
    row = conn.execute("SELECT first_no + n FROM journal ORDER BY first_no DESC LIMIT 1"
                       ).fetchone()
    return int(row[0]) if row else 0


def journal_rows(conn: sqlite3.Connection, since_no: int = 0) -> Iterator[tuple[int, bytes]]:
    """Journal rows that hold records numbered since_no or later, in order."""
    cur = conn.execute("SELECT first_no, records FROM journal WHERE first_no + n > ? "
                       "ORDER BY first_no", (since_no,))
    for first_no, blob in cur:
        yield int(first_no), bytes(blob)


def journal_records(conn: sqlite3.Connection,
                    since_no: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All records numbered since_no or later, and their numbers."""
    parts, numbers = [], []
    for first_no, blob in journal_rows(conn, since_no):
        recs = np.frombuffer(blob, dtype=JREC_DTYPE)
        nos = np.arange(first_no, first_no + len(recs), dtype=np.int64)
        keep = nos >= since_no
        parts.append(recs[keep])
        numbers.append(nos[keep])
    if not parts:
        return np.zeros(0, dtype=JREC_DTYPE), np.zeros(0, dtype=np.int64)
    return np.concatenate(parts), np.concatenate(numbers)


class CommitStats:
    """Commit latency and size histograms, written by the committer thread only."""

    LATENCY_BOUNDS_US = (100, 250, 500, 1000, 2000, 3000, 5000, 10000, 25000, 50000, 100000,
                         1000000)
    SIZE_BOUNDS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)

    def __init__(self) -> None:
        self.latency = np.zeros(len(self.LATENCY_BOUNDS_US) + 1, dtype=np.uint64)
        self.latency_sum_us = 0
        self.sizes = np.zeros(len(self.SIZE_BOUNDS) + 1, dtype=np.uint64)
        self.records = 0
        self.commits = 0

    def observe(self, latency_us: int, records: int) -> None:
        self.latency[np.searchsorted(self.LATENCY_BOUNDS_US, latency_us)] += 1
        self.latency_sum_us += latency_us
        self.sizes[np.searchsorted(self.SIZE_BOUNDS, records)] += 1
        self.records += records
        self.commits += 1


class GroupCommitter(threading.Thread):
    """Writes the core's pending journal records, many batches per commit.

    ``take`` hands over pending records (first number, packed bytes); ``on_durable(end_no)``
    is called (from this thread) after records up to end_no are durable; ``on_failure(exc)``
    when a commit fails, after which nothing more is written: the switch must stop, since it
    can no longer make its answers durable.
    """

    def __init__(self, path: Path, take: Callable[[], tuple[int, bytes]],
                 on_durable: Callable[[int], None], on_failure: Callable[[BaseException], None],
                 *, synchronous: str = "FULL") -> None:
        super().__init__(name="onecard-group-commit", daemon=True)
        self._path = path
        self._take = take
        self._on_durable = on_durable
        self._on_failure = on_failure
        self._synchronous = synchronous
        self._wake = threading.Event()
        self._stopping = False
        self.stats = CommitStats()
        self.durable_no = 0
        self._durable_cond = threading.Condition()

    def wake(self) -> None:
        """New records are pending (called by the event loop after a batch)."""
        self._wake.set()

    def stop(self) -> None:
        """Commit what is pending, then end."""
        self._stopping = True
        self._wake.set()

    def wait_durable(self, record_no: int, timeout: float | None = None) -> bool:
        """Block until records below record_no are durable (checkpointer thread)."""
        with self._durable_cond:
            return self._durable_cond.wait_for(lambda: self.durable_no >= record_no, timeout)

    def run(self) -> None:
        conn = connect(self._path, synchronous=self._synchronous)
        try:
            while True:
                if not self._stopping:
                    self._wake.wait()
                self._wake.clear()
                first_no, blob = self._take()
                if blob:
                    self._commit(conn, first_no, blob)
                elif self._stopping:
                    return
        except BaseException as exc:  # a failed commit must stop the switch, whatever it was
            log.critical("journal commit failed, no further replies can be made durable: %s",
                         exc)
            self._on_failure(exc)
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, first_no: int, blob: bytes) -> None:
        n = len(blob) // JREC_DTYPE.itemsize
        start = time.perf_counter_ns()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO journal (first_no, n, ts_us, records) VALUES (?, ?, ?, ?)",
                     (first_no, n, time.time_ns() // 1000, blob))
        conn.execute("COMMIT")
        self.stats.observe((time.perf_counter_ns() - start) // 1000, n)
        with self._durable_cond:
            self.durable_no = first_no + n
            self._durable_cond.notify_all()
        self._on_durable(first_no + n)
