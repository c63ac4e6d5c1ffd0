"""The embedded store: one SQLite database (WAL) holding reference tables and the journal.

The journal is written by ``onecard.core.commit.GroupCommitter``, a thread that takes every
record the core has appended since its last commit (from all connections at once), writes them
as one packed row per calendar day, and commits with ``synchronous=FULL``; only then does the
event loop release the replies that depended on them. A row is ``(first_no, n, ts_us, records,
format, day, kinds)`` where ``records`` is ``n`` 80-byte records of journal format ``format``
(``protocols/JOURNAL.md``) numbered from ``first_no``, all decided on the China calendar day
``day``, of the kinds in the bit mask ``kinds`` (indexed: ``rows_of_days``). Rows are read
back in the current format whatever they were written in (``journal_rows``). Nothing rewrites
a committed row, with two exceptions: the migration to store schema 4 re-enciphers the card
numbers of rows written before the journal kept them enciphered (format 3), so that no card
number stays on disk in clear; the migration to schema 5 cuts a row of two days in two.

Nothing secret is stored in clear (``switch/security/keystore.py``): terminal master keys are
wrapped (``terminals.tmk_wrapped``), card numbers are found by ``pan_hmac`` and kept sealed in
``pan_enc``, holder names and ID numbers are sealed; the database and its -wal/-shm are 0600.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onecard.protocols import store_tables
from onecard.protocols.journal_codec import RECORD_DTYPE, upgrade
from onecard.switch.security import modes
from onecard.switch.sql import SqlConnection

if TYPE_CHECKING:
    pass

log = logging.getLogger("onecard.store")

SCHEMA_VERSION = store_tables.SCHEMA_VERSION
SQLITE = 0                              # store_tables dialect
DB_NAME = "onecard.db"

# Rendered from the one declaration of the store's tables (protocols/store_tables.py), which
# the PostgreSQL store's schema is rendered from too.
SCHEMA = "".join(f"{statement};\n" for statement in store_tables.statements(SQLITE))


def db_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / DB_NAME


def private_db_files(path: str | Path) -> None:
    """The database and its -wal/-shm 0600 (SQLite creates them with the process's umask)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        modes.private_file(f"{path}{suffix}")


def connect(path: str | Path, *, synchronous: str = "FULL",
            readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        # Freed pages are zeroed: an updated or deleted row leaves no copy in the file.
        conn.execute("PRAGMA secure_delete=ON")
        private_db_files(path)
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


def schema_version(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else None


def check_schema(conn: sqlite3.Connection, path: Path) -> None:
    found = schema_version(conn)
    if found != SCHEMA_VERSION:
        raise RuntimeError(f"{path}: schema version {found or 'none'}, this build needs "
                           f"{SCHEMA_VERSION}")


def journal_end(conn: SqlConnection) -> int:
    """Number of the next journal record (records are numbered from 0 without gaps)."""
    row = conn.execute("SELECT first_no + n FROM journal ORDER BY first_no DESC LIMIT 1"
                       ).fetchone()
    return int(row[0]) if row else 0


def journal_rows(conn: SqlConnection, since_no: int = 0) -> Iterator[tuple[int, bytes]]:
    """Journal rows that hold records numbered since_no or later, in order, their records in
    the current format (an older row is read through its format's reader)."""
    cur = conn.execute("SELECT first_no, records, format FROM journal WHERE first_no + n > ? "
                       "ORDER BY first_no", (since_no,))
    for first_no, blob, fmt in cur:
        yield int(first_no), upgrade(bytes(blob), int(fmt))


# The rows of calendar days: those a committer wrote for the days, and any row without a day
# (written by something else: read by every date, never lost to one).
DAYS_SQL = ("SELECT first_no, records, format FROM journal WHERE (day BETWEEN ? AND ? OR day "
            "IS NULL) AND (kinds IS NULL OR kinds & ? != 0) ORDER BY first_no")
ALL_KINDS = (1 << 63) - 1


def rows_of_days(conn: SqlConnection, first_day: int, last_day: int,
                 kinds: int = ALL_KINDS) -> Iterator[tuple[int, bytes]]:
    """Journal rows of the China calendar days first_day..last_day (journal_codec) that
    hold a record of a kind in the bit mask ``kinds``, in order, in the current format."""
    for first_no, blob, fmt in conn.execute(DAYS_SQL, (int(first_day), int(last_day), int(kinds))):
        yield int(first_no), upgrade(bytes(blob), int(fmt))


def journal_records(conn: SqlConnection,
                    since_no: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All records numbered since_no or later, and their numbers."""
    return records_of(journal_rows(conn, since_no), since_no)


def records_of(rows: Iterable[tuple[int, bytes]],
               since_no: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The records of journal rows (either store's ``journal_rows``) numbered since_no or
    later, and their numbers."""
    parts, numbers = [], []
    for first_no, blob in rows:
        recs = np.frombuffer(blob, dtype=RECORD_DTYPE)
        nos = np.arange(first_no, first_no + len(recs), dtype=np.int64)
        keep = nos >= since_no
        parts.append(recs[keep])
        numbers.append(nos[keep])
    if not parts:
        return np.zeros(0, dtype=RECORD_DTYPE), np.zeros(0, dtype=np.int64)
    return np.concatenate(parts), np.concatenate(numbers)
