"""Versioned schema migrations for the PostgreSQL store (``onecard db migrate``).

The version is ``meta.schema_version``, as in the SQLite store. Each step runs in its own
transaction with the new version written in it, so a failed step leaves the database at the
version before it. Migrators are serialised by an advisory lock: two started together do
not both create the tables.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from onecard.switch.store.pg.connect import PgError, one_row
from onecard.switch.store.pg.schema import FIRST_VERSION, MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("onecard.pg")

# pg_advisory_xact_lock key for schema changes and imports ("onecard" in ASCII, as a number).
LOCK_KEY: Final = 0x6F6E6563617264


def schema_version(conn: psycopg.Connection) -> int | None:
    """The database's version, None when it has no store at all (no meta table)."""
    (meta,) = one_row(conn.execute("SELECT to_regclass('meta')"))
    if meta is None:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        raise PgError("the database has a meta table but no schema_version: not an onecard "
                      "store (or a broken one); use another database")
    return int(row[0])


def migrate(conn: psycopg.Connection) -> list[int]:
    """Bring the database to this build's schema; the versions applied (none if current)."""
    assert not conn.autocommit, "migrate: each step is its own transaction"
    done: list[int] = []
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            found = schema_version(conn)
            if found is not None and found > SCHEMA_VERSION:
                raise PgError(f"the database is at schema version {found}, newer than this "
                              f"build's {SCHEMA_VERSION}: upgrade onecard")
            if found == SCHEMA_VERSION:
                return done
            version = FIRST_VERSION if found is None else found + 1
            if version not in MIGRATIONS:
                raise PgError(f"schema version {found} has no migration to {version}")
            step = MIGRATIONS[version]
            if callable(step):
                step(conn)
            else:
                for statement in step:
                    conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('schema_version', %s) ON CONFLICT (key) "
                         "DO UPDATE SET value = excluded.value", (str(version),))
        log.info("PostgreSQL store schema %s -> %d", found, version)
        done.append(version)


def require_current(conn: psycopg.Connection) -> None:
    found = schema_version(conn)
    if found != SCHEMA_VERSION:
        raise PgError(f"the database is at schema version {found or 'none'}, this build needs "
                      f"{SCHEMA_VERSION}: run onecard db migrate")
