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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from onecard.protocols import journal_codec
from onecard.protocols.journal_codec import RECORD_DTYPE, upgrade
from onecard.switch.security import modes

if TYPE_CHECKING:
    from onecard.switch.security.keystore import DataKeys

log = logging.getLogger("onecard.store")

SCHEMA_VERSION = 5
# A Python step gets the connection (inside the step's transaction) and the data set's keys
# (created, with the key-encryption key, when the data set has none yet).
PythonStep = Callable[[sqlite3.Connection, "DataKeys"], None]


def _encrypt_at_rest(conn: sqlite3.Connection, keys: DataKeys) -> None:
    from onecard.switch.store import encrypt

    encrypt.migrate(conn, keys)


def _index_days(conn: sqlite3.Connection) -> None:
    """Schema 5: each row's calendar day and kinds (journal_codec.row_index); a row of more
    than one day is cut into rows of one. Read once, in order, a row at a time."""
    conn.execute("ALTER TABLE journal ADD COLUMN day INTEGER")
    conn.execute("ALTER TABLE journal ADD COLUMN kinds INTEGER")
    rows = conn.execute("SELECT first_no, ts_us, format FROM journal ORDER BY first_no"
                        ).fetchall()
    for i, (first_no, ts_us, fmt) in enumerate(rows):
        (blob,) = conn.execute("SELECT records FROM journal WHERE first_no = ?",
                               (first_no,)).fetchone()
        parts = journal_codec.day_rows(int(first_no), int(ts_us), int(fmt), bytes(blob))
        if len(parts) > 1:
            conn.execute("DELETE FROM journal WHERE first_no = ?", (first_no,))
        conn.executemany("INSERT OR REPLACE INTO journal (first_no, n, ts_us, records, format, "
                         "day, kinds) VALUES (?, ?, ?, ?, ?, ?, ?)", parts)
        if i and i % 100_000 == 0:
            log.info("store schema 5: %d of %d journal rows indexed by day", i, len(rows))
    conn.execute("CREATE INDEX journal_day ON journal (day, kinds)")


class ConnStep(NamedTuple):
    """A Python step that needs no keys (it rewrites no secret: no vacuum after it)."""
    run: Callable[[sqlite3.Connection], None]


# Each step takes a database from the version before it to its own, in one transaction: SQL
# statements, a Python function (given the data set's keys), or a ConnStep.
MIGRATIONS: dict[int, tuple[str, ...] | PythonStep | ConnStep] = {
    # The journal's rows name their record format; rows written before it are format 1.
    3: ("ALTER TABLE journal ADD COLUMN format INTEGER NOT NULL DEFAULT 1",),
    # Data at rest: master keys wrapped, holders sealed, cards found by HMAC, journal card
    # numbers enciphered (security/encrypt.py).
    4: _encrypt_at_rest,
    # The journal indexed by day, for clearing to read a date's rows only (issue 28).
    5: ConnStep(_index_days),
}
DB_NAME = "onecard.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS regions (
    idx INTEGER PRIMARY KEY, code INTEGER NOT NULL UNIQUE, name_zh TEXT NOT NULL,
    name_en TEXT NOT NULL, province INTEGER NOT NULL, grp TEXT NOT NULL,
    elderly_age INTEGER NOT NULL, elderly_pct INTEGER NOT NULL, disabled_pct INTEGER NOT NULL,
    transfer_minutes INTEGER NOT NULL, transfer_discount_fen INTEGER NOT NULL,
    med_deductible_fen INTEGER NOT NULL, med_ratio_pct INTEGER NOT NULL,
    med_cap_fen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS operators (
    idx INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
    kind INTEGER NOT NULL, region_idx INTEGER NOT NULL REFERENCES regions(idx),
    flat_fare_fen INTEGER NOT NULL, fare_rule TEXT);
CREATE TABLE IF NOT EXISTS stations (
    id INTEGER PRIMARY KEY, operator_idx INTEGER NOT NULL REFERENCES operators(idx),
    line TEXT NOT NULL, name TEXT NOT NULL, km REAL NOT NULL);
CREATE TABLE IF NOT EXISTS catalogue (
    code TEXT PRIMARY KEY, idx INTEGER NOT NULL UNIQUE, name_zh TEXT NOT NULL,
    name_en TEXT NOT NULL, domain TEXT NOT NULL, functions INTEGER NOT NULL,
    scope TEXT NOT NULL, daily_limit_fen INTEGER NOT NULL, active INTEGER NOT NULL,
    version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS catalogue_history (
    version INTEGER PRIMARY KEY, code TEXT NOT NULL, change TEXT NOT NULL,
    operator TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policies (
    idx INTEGER PRIMARY KEY, name TEXT NOT NULL, base_fen INTEGER NOT NULL,
    rules TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS surnames (idx INTEGER PRIMARY KEY, surname TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS terminals (
    idx INTEGER PRIMARY KEY, tid TEXT NOT NULL UNIQUE, merchant TEXT NOT NULL,
    kind INTEGER NOT NULL, protocol INTEGER NOT NULL,
    region_idx INTEGER NOT NULL REFERENCES regions(idx), operator_idx INTEGER,
    station_id INTEGER, mac_alg INTEGER NOT NULL, permitted INTEGER NOT NULL,
    tmk_wrapped BLOB NOT NULL, name TEXT NOT NULL, place TEXT NOT NULL,
    app_code TEXT NOT NULL REFERENCES catalogue(code), policy_idx INTEGER NOT NULL,
    scope INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cards (
    idx INTEGER PRIMARY KEY, pan_hmac BLOB NOT NULL UNIQUE, pan_enc BLOB NOT NULL,
    account INTEGER NOT NULL, holder_name BLOB NOT NULL, id_number BLOB NOT NULL,
    bank TEXT NOT NULL, kind TEXT NOT NULL DEFAULT 'chip');
CREATE INDEX IF NOT EXISTS cards_account ON cards(account);
CREATE TABLE IF NOT EXISTS filings (
    account INTEGER NOT NULL, province INTEGER NOT NULL, operator TEXT NOT NULL,
    at TEXT NOT NULL, PRIMARY KEY (account, province));
CREATE TABLE IF NOT EXISTS programmes (
    idx INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, name_zh TEXT NOT NULL,
    name_en TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS disbursements (
    programme INTEGER NOT NULL, period INTEGER NOT NULL, pan_hmac BLOB NOT NULL,
    card TEXT NOT NULL, amount_fen INTEGER NOT NULL, result TEXT NOT NULL, record_no INTEGER,
    operator TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (programme, period, pan_hmac));
CREATE TABLE IF NOT EXISTS admin_log (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, operator TEXT NOT NULL, role TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, details TEXT NOT NULL, record_no INTEGER);
CREATE TABLE IF NOT EXISTS journal (
    first_no INTEGER PRIMARY KEY, n INTEGER NOT NULL, ts_us INTEGER NOT NULL,
    records BLOB NOT NULL, format INTEGER NOT NULL, day INTEGER, kinds INTEGER);
CREATE INDEX IF NOT EXISTS journal_day ON journal (day, kinds);
"""


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


def migrate(path: Path, kek_file: str | None = None) -> list[int]:
    """Bring an older database to this build's schema, a step a transaction; the versions
    it went through. A database newer than the build, or with no version, is left alone
    (check_schema then refuses it with its version). After a Python step the file is
    vacuumed and its WAL emptied: no page of what the step replaced stays on disk."""
    conn = connect(path, readonly=True)
    try:
        found = schema_version(conn)
    finally:
        conn.close()
    if found is None or found >= SCHEMA_VERSION:
        return []
    if found + 1 not in MIGRATIONS:
        raise RuntimeError(f"{path}: schema version {found} is older than this build reads")
    conn = connect(path)
    try:
        done = []
        for version in range(found + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            step = MIGRATIONS[version]
            if isinstance(step, ConnStep):
                step.run(conn)
            elif callable(step):
                step(conn, _keys_for(conn, path, kek_file))
            else:
                for statement in step:
                    conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                         (str(version),))
            conn.execute("COMMIT")
            log.info("store schema %d -> %d: %s", version - 1, version, path)
            done.append(version)
        if any(callable(MIGRATIONS[v]) for v in done):
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return done
    finally:
        conn.close()


def _keys_for(conn: sqlite3.Connection, path: Path, kek_file: str | None) -> DataKeys:
    from onecard.switch.security import keystore

    if keystore.has_keys(conn):
        return keystore.open_data_set(conn, path.parent, kek_file)
    return keystore.init_data_set(conn, path.parent, kek_file)


def journal_end(conn: sqlite3.Connection) -> int:
    """Number of the next journal record (records are numbered from 0 without gaps)."""
    row = conn.execute("SELECT first_no + n FROM journal ORDER BY first_no DESC LIMIT 1"
                       ).fetchone()
    return int(row[0]) if row else 0


def journal_rows(conn: sqlite3.Connection, since_no: int = 0) -> Iterator[tuple[int, bytes]]:
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


def rows_of_days(conn: sqlite3.Connection, first_day: int, last_day: int,
                 kinds: int = ALL_KINDS) -> Iterator[tuple[int, bytes]]:
    """Journal rows of the China calendar days first_day..last_day (journal_codec) that
    hold a record of a kind in the bit mask ``kinds``, in order, in the current format."""
    for first_no, blob, fmt in conn.execute(DAYS_SQL, (int(first_day), int(last_day), int(kinds))):
        yield int(first_no), upgrade(bytes(blob), int(fmt))


def journal_records(conn: sqlite3.Connection,
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
