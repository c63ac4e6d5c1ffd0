"""The PostgreSQL schema: the SQLite store's (``switch/store/sqlite.py`` SCHEMA, version 5,
encrypted at rest) in PostgreSQL types, plus the fencing lease.

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

from onecard.protocols.journal_codec import day_rows

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION: Final = 5

# Tables in an order that satisfies their foreign keys (import copies them in this order).
TABLES: Final = (
    "meta", "regions", "operators", "stations", "catalogue", "catalogue_history", "policies",
    "surnames", "terminals", "cards", "filings", "programmes", "disbursements", "admin_log",
    "journal",
)
# Not in the SQLite store: the fencing lease (later phases check and advance it in every
# commit transaction). One row at most; its epoch only grows, so import never resets it.
LEASE_TABLE: Final = "lease"
# Not in the SQLite store's tables either, but the data set's all the same: what SQLite keeps
# as files in data_dir (the checkpoints' sealed arrays, the sealed holders.bin), so that a
# switch needs nothing but its key-encryption key to start from PostgreSQL. The importer fills
# them from those files and checks them apart from TABLES.
FILE_TABLES: Final = ("checkpoints", "files")

BASE: Final = (
    "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE regions (
    idx bigint PRIMARY KEY, code bigint NOT NULL UNIQUE, name_zh text NOT NULL,
    name_en text NOT NULL, province bigint NOT NULL, grp text NOT NULL,
    elderly_age bigint NOT NULL, elderly_pct bigint NOT NULL, disabled_pct bigint NOT NULL,
    transfer_minutes bigint NOT NULL, transfer_discount_fen bigint NOT NULL,
    med_deductible_fen bigint NOT NULL, med_ratio_pct bigint NOT NULL,
    med_cap_fen bigint NOT NULL)""",
    """CREATE TABLE operators (
    idx bigint PRIMARY KEY, code text NOT NULL UNIQUE, name text NOT NULL,
    kind bigint NOT NULL, region_idx bigint NOT NULL REFERENCES regions(idx),
    flat_fare_fen bigint NOT NULL, fare_rule text)""",
    """CREATE TABLE stations (
    id bigint PRIMARY KEY, operator_idx bigint NOT NULL REFERENCES operators(idx),
    line text NOT NULL, name text NOT NULL, km double precision NOT NULL)""",
    """CREATE TABLE catalogue (
    code text PRIMARY KEY, idx bigint NOT NULL UNIQUE, name_zh text NOT NULL,
    name_en text NOT NULL, domain text NOT NULL, functions bigint NOT NULL,
    scope text NOT NULL, daily_limit_fen bigint NOT NULL, active bigint NOT NULL,
    version bigint NOT NULL)""",
    """CREATE TABLE catalogue_history (
    version bigint PRIMARY KEY, code text NOT NULL, change text NOT NULL,
    operator text NOT NULL, at text NOT NULL)""",
    """CREATE TABLE policies (
    idx bigint PRIMARY KEY, name text NOT NULL, base_fen bigint NOT NULL, rules text NOT NULL)""",
    "CREATE TABLE surnames (idx bigint PRIMARY KEY, surname text NOT NULL)",
    """CREATE TABLE terminals (
    idx bigint PRIMARY KEY, tid text NOT NULL UNIQUE, merchant text NOT NULL,
    kind bigint NOT NULL, protocol bigint NOT NULL,
    region_idx bigint NOT NULL REFERENCES regions(idx), operator_idx bigint,
    station_id bigint, mac_alg bigint NOT NULL, permitted bigint NOT NULL,
    tmk_wrapped bytea NOT NULL, name text NOT NULL, place text NOT NULL,
    app_code text NOT NULL REFERENCES catalogue(code), policy_idx bigint NOT NULL,
    scope bigint NOT NULL)""",
    """CREATE TABLE cards (
    idx bigint PRIMARY KEY, pan_hmac bytea NOT NULL UNIQUE, pan_enc bytea NOT NULL,
    account bigint NOT NULL, holder_name bytea NOT NULL, id_number bytea NOT NULL,
    bank text NOT NULL, kind text NOT NULL DEFAULT 'chip')""",
    "CREATE INDEX cards_account ON cards(account)",
    """CREATE TABLE filings (
    account bigint NOT NULL, province bigint NOT NULL, operator text NOT NULL,
    at text NOT NULL, PRIMARY KEY (account, province))""",
    """CREATE TABLE programmes (
    idx bigint PRIMARY KEY, code text NOT NULL UNIQUE, name_zh text NOT NULL,
    name_en text NOT NULL)""",
    """CREATE TABLE disbursements (
    programme bigint NOT NULL, period bigint NOT NULL, pan_hmac bytea NOT NULL,
    card text NOT NULL, amount_fen bigint NOT NULL, result text NOT NULL, record_no bigint,
    operator text NOT NULL, at text NOT NULL, PRIMARY KEY (programme, period, pan_hmac))""",
    """CREATE TABLE admin_log (
    id bigint PRIMARY KEY, at text NOT NULL, operator text NOT NULL, role text NOT NULL,
    action text NOT NULL, target text NOT NULL, details text NOT NULL, record_no bigint)""",
    # A row: n records of 80 bytes (protocols/JOURNAL.md) numbered from first_no.
    """CREATE TABLE journal (
    first_no bigint PRIMARY KEY CHECK (first_no >= 0), n int NOT NULL CHECK (n > 0),
    ts_us bigint NOT NULL, records bytea NOT NULL CHECK (octet_length(records) = 80 * n),
    format smallint NOT NULL)""",
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
