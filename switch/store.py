"""The embedded store: one SQLite database (WAL) holding reference tables and the journal.

The journal is written by ``onecard.core.commit.GroupCommitter``, a thread that takes every
record the core has appended since its last commit (from all connections at once), writes them
as one packed row, and commits with ``synchronous=FULL``; only then does the event loop release
the replies that depended on them. A row is ``(first_no, n, ts_us, records)`` where ``records``
is ``n`` 64-byte records (``onecard.core.journal.JREC_DTYPE``) numbered from ``first_no``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from onecard.core.journal import JREC_DTYPE

log = logging.getLogger("onecard.store")

SCHEMA_VERSION = 2
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
    tmk BLOB NOT NULL, name TEXT NOT NULL, place TEXT NOT NULL,
    app_code TEXT NOT NULL REFERENCES catalogue(code), policy_idx INTEGER NOT NULL,
    scope INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cards (
    idx INTEGER PRIMARY KEY, pan TEXT NOT NULL UNIQUE, account INTEGER NOT NULL,
    holder_name TEXT NOT NULL, id_number TEXT NOT NULL, bank TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'chip');
CREATE INDEX IF NOT EXISTS cards_account ON cards(account);
CREATE TABLE IF NOT EXISTS filings (
    account INTEGER NOT NULL, province INTEGER NOT NULL, operator TEXT NOT NULL,
    at TEXT NOT NULL, PRIMARY KEY (account, province));
CREATE TABLE IF NOT EXISTS programmes (
    idx INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, name_zh TEXT NOT NULL,
    name_en TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS disbursements (
    programme INTEGER NOT NULL, period INTEGER NOT NULL, pan TEXT NOT NULL,
    amount_fen INTEGER NOT NULL, result TEXT NOT NULL, record_no INTEGER,
    operator TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (programme, period, pan));
CREATE TABLE IF NOT EXISTS admin_log (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, operator TEXT NOT NULL, role TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, details TEXT NOT NULL, record_no INTEGER);
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
