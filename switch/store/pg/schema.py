"""The PostgreSQL schema: the store's tables (``protocols/store_tables.py``, the one declaration
the SQLite store's schema is rendered from too) in PostgreSQL types, plus what PostgreSQL
alone has: the checkpoints and sealed files the SQLite store keeps beside its database, and
the fencing lease.

Versions follow the SQLite store's: a PostgreSQL database at version 5 holds exactly what a
SQLite data set at version 5 holds, so ``onecard db import`` needs no translation, only a copy.
Two tables hold what the SQLite store keeps as files beside its database (``checkpoints``,
``files``): a switch starting from PostgreSQL needs only its key-encryption key locally.
Integers are ``bigint`` wherever SQLite's 64-bit INTEGER could hold more than 2^31 (record
numbers, accounts, fen); blobs are ``bytea``; nothing is decrypted on the way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from onecard.protocols import store_tables
from onecard.protocols.journal_codec import day_rows

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION: Final = store_tables.SCHEMA_VERSION

# Tables in an order that satisfies their foreign keys (import copies them in this order).
TABLES: Final = store_tables.NAMES
# Not in the SQLite store: the fencing lease (later phases check and advance it in every
# commit transaction). One row at most; its epoch only grows, so import never resets it.
LEASE_TABLE: Final = "lease"
# Not in the SQLite store's tables either, but the data set's all the same: what SQLite keeps
# as files in data_dir (the checkpoints' sealed arrays, the sealed holders.bin), so that a
# switch needs nothing but its key-encryption key to start from PostgreSQL. The importer fills
# them from those files and checks them apart from TABLES.
FILE_TABLES: Final = ("checkpoints", "files")

POSTGRESQL: Final = 1                      # store_tables dialect
# Version 4 of the store's tables, rendered from their one declaration (protocols/
# store_tables.py, which the SQLite schema comes from too), then what PostgreSQL alone has.
BASE: Final = (
    *store_tables.statements(POSTGRESQL, version=4),
    # A row: one array of the checkpoint taken at journal record upto, its sealed bytes exactly
    # as snapshots.write puts them in <name>.sealed (same label and associated data). All of a
    # checkpoint's arrays are written in one transaction, so every upto here is complete.
    """CREATE TABLE checkpoints (
    upto bigint NOT NULL CHECK (upto >= 0), name text NOT NULL, data bytea NOT NULL,
    PRIMARY KEY (upto, name))""",
    # Sealed files of the data set by name (holders.bin), their bytes as the file holds them.
    "CREATE TABLE files (name text PRIMARY KEY, data bytea NOT NULL)",
    # A journal row is tens of KiB: TOAST's default pglz compression of it took a third of
    # the server's CPU at 64x32 load (bench/pg_compare.py: with a synchronous standby 0.49x
    # SQLite's rate with pglz, 0.72-0.76x with lz4, 0.72x uncompressed). lz4 keeps the WAL
    # (what the standby receives) small; a server built without lz4 stores it uncompressed.
    """DO $$ BEGIN
    ALTER TABLE journal ALTER COLUMN records SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    ALTER TABLE journal ALTER COLUMN records SET STORAGE EXTERNAL;
END $$""",
    "CREATE TABLE lease (epoch bigint NOT NULL CHECK (epoch >= 0), holder text NOT NULL, "
    "at timestamptz NOT NULL)",
    # At most one row: an index on a constant.
    "CREATE UNIQUE INDEX lease_one_row ON lease ((true))",
    "INSERT INTO lease VALUES (0, '', now())",
)



def _index_days(conn: psycopg.Connection) -> None:
    """Version 5, as the SQLite store's: each journal row's calendar day and kinds, a row of
    more than one day cut into rows of one (journal_codec.day_rows); a few rows at a time."""
    conn.execute("ALTER TABLE journal ADD COLUMN day bigint, ADD COLUMN kinds bigint")
    after = -1
    while True:
        rows = conn.execute("SELECT first_no, ts_us, format, records FROM journal WHERE "
                            "first_no > %s ORDER BY first_no LIMIT 200", (after,)).fetchall()
        if not rows:
            break
        for first_no, ts_us, fmt, blob in rows:
            parts = day_rows(int(first_no), int(ts_us), int(fmt), bytes(blob))
            conn.execute("DELETE FROM journal WHERE first_no = %s", (first_no,))
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO journal (first_no, n, ts_us, records, format, "
                                "day, kinds) VALUES (%s, %s, %s, %s, %s, %s, %s)", parts)
            after = int(first_no) + sum(p[1] for p in parts) - 1
    conn.execute("CREATE INDEX journal_day ON journal (day, kinds)")


# Each step takes the database from the version before it to its own, in one transaction:
# SQL statements, or a Python function of the connection. There is no PostgreSQL store
# before version 4: an empty database goes straight to it, then on.
MIGRATIONS: Final[dict[int, tuple[str, ...] | Callable[[psycopg.Connection], None]]] = {
    4: BASE,
    5: _index_days,
}
FIRST_VERSION: Final = min(MIGRATIONS)
