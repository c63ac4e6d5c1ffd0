"""The store's tables are declared once (protocols/store_tables.py) and both stores' schemas come
from that declaration: a fresh SQLite data set and a PostgreSQL store brought up by its
migrations (version 4's base, then each step) hold exactly the declared columns, in the
declared order, with each dialect's type and nullability, and the declared keys and indexes."""

from __future__ import annotations

import sqlite3

import pytest

from onecard.protocols import store_tables
from onecard.switch.store import sqlite as store_sqlite

from pg_fixtures import dsn, pg  # noqa: F401  (fixtures: a PostgreSQL database of its own)

PG_TYPES = {"bigint": "bigint", "int": "integer", "smallint": "smallint", "text": "text",
            "bytea": "bytea", "double precision": "double precision"}


def declared(dialect: int) -> dict[str, list[tuple[str, str, bool]]]:
    """Table -> [(column, type as the dialect names it, NOT NULL)] at this build's version."""
    return {t.name: [(c.name, store_tables.TYPES[c.type][dialect],
                      "NOT NULL" in c.constraints or "PRIMARY KEY" in c.constraints)
                     for c in t.columns] for t in store_tables.TABLES}


def test_a_fresh_sqlite_data_set_holds_the_declared_tables():
    conn = sqlite3.connect(":memory:")
    store_sqlite.create_schema(conn)
    found = {}
    for name in store_tables.NAMES:
        rows = conn.execute(f"PRAGMA table_info({name})").fetchall()
        # SQLite reports notnull 0 for an INTEGER PRIMARY KEY (the rowid), as declared here.
        found[name] = [(r[1], r[2], bool(r[3]) or bool(r[5])) for r in rows]
    assert found == declared(0)
    keyed = {name: [r[1] for r in conn.execute(f"PRAGMA table_info({name})") if r[5]]
             for name in ("filings", "disbursements")}
    assert keyed == {"filings": ["account", "province"],
                     "disbursements": ["programme", "period", "pan_hmac"]}
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index' "
                                          "AND name NOT LIKE 'sqlite_%'")}
    assert indexes == {i.name for i in store_tables.INDEXES}


def test_a_table_of_an_older_version_is_rendered_without_later_columns():
    journal = store_tables.table("journal")
    assert "day" not in store_tables.create_table(journal, 1, version=4)
    assert "day bigint" in store_tables.create_table(journal, 1, version=5)
    assert "journal_day" not in " ".join(store_tables.statements(1, version=4))


def test_postgresql_migrations_end_at_the_declared_tables(dsn):
    psycopg = pytest.importorskip("psycopg")
    from onecard.switch.store.pg.migrate import migrate

    with psycopg.connect(dsn) as conn:
        migrate(conn)
        rows = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable FROM "
            "information_schema.columns WHERE table_schema = 'public' "
            "ORDER BY table_name, ordinal_position").fetchall()
        indexes = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
            "AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'")}
    found: dict[str, list] = {}
    for table, column, data_type, nullable in rows:
        found.setdefault(table, []).append((column, data_type, nullable == "NO"))
    want = {name: [(c, PG_TYPES[t], nn) for c, t, nn in cols]
            for name, cols in declared(1).items()}
    assert {name: found[name] for name in want} == want
    assert {i.name for i in store_tables.INDEXES} <= indexes
