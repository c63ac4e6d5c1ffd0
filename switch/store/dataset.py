"""Opening an SQLite data set: the steps that bring an older database to this build's schema
(``migrate``, run by the loader before anything reads it) and the data set's keys. Kept apart
from ``sqlite.py`` because the steps need the keys and the schema-4 step (``encrypt.py``)
needs the schema: the schema module imports neither, so nothing here imports back."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from onecard.protocols import journal_codec
from onecard.switch.security import keystore
from onecard.switch.security.keystore import DataKeys
from onecard.switch.store import encrypt
from onecard.switch.store.sqlite import SCHEMA_VERSION, connect, db_path, schema_version

log = logging.getLogger("onecard.store")

# A Python step gets the connection (inside the step's transaction) and the data set's keys
# (created, with the key-encryption key, when the data set has none yet).
PythonStep = Callable[[sqlite3.Connection, DataKeys], None]


def _encrypt_at_rest(conn: sqlite3.Connection, keys: DataKeys) -> None:
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
    if keystore.has_keys(conn):
        return keystore.open_data_set(conn, path.parent, kek_file)
    return keystore.init_data_set(conn, path.parent, kek_file)




def for_data_dir(data_dir: str | Path, configured: str | None = None) -> DataKeys:
    """The keys of a data set on disk (tools, terminal simulators, tests)."""
    conn = connect(db_path(data_dir), readonly=True)
    try:
        return keystore.open_data_set(conn, data_dir, configured)
    finally:
        conn.close()
