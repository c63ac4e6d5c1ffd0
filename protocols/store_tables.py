"""The store's tables, declared once: every table, column, type and constraint of a data set,
from which both dialects are rendered, the embedded SQLite store's schema
(``switch/store/sqlite.py`` SCHEMA) and the PostgreSQL store's (``switch/store/pg/schema.py``).

A column's type is one of ``TYPES``: ``int`` is SQLite's 64-bit INTEGER and PostgreSQL's
``bigint`` (record numbers, accounts, fen may exceed 2^31); ``int32`` and ``int16`` are
narrower in PostgreSQL only; ``blob`` is BLOB and ``bytea`` (sealed values, never decrypted
on the way); ``real`` is REAL and ``double precision``. ``since`` is the store schema
version a column or index was added in (PostgreSQL's version-4 base is rendered without the
later ones, which its migrations add). ``pg_check`` is a CHECK only PostgreSQL enforces (the
SQLite tables were made without one, and SQLite cannot add one to an existing table).
"""

from __future__ import annotations

from typing import Final, NamedTuple

SCHEMA_VERSION: Final = 5
TYPES: Final = {"int": ("INTEGER", "bigint"), "int32": ("INTEGER", "int"),
                "int16": ("INTEGER", "smallint"), "text": ("TEXT", "text"),
                "blob": ("BLOB", "bytea"), "real": ("REAL", "double precision")}


class Column(NamedTuple):
    name: str
    type: str
    constraints: str = ""        # in both dialects: NOT NULL, UNIQUE, REFERENCES, DEFAULT
    since: int = 1
    pg_check: str = ""


class Index(NamedTuple):
    name: str
    table: str
    columns: str
    since: int = 1


class Table(NamedTuple):
    name: str
    columns: tuple[Column, ...]
    primary_key: str = ""        # a key of several columns; one column says PRIMARY KEY itself


def _c(spec: str, since: int = 1, pg_check: str = "") -> Column:
    """``"name type constraints..."`` (the way the SQL reads) as a Column."""
    name, type_, *rest = spec.split(" ", 2)
    return Column(name, type_, rest[0] if rest else "", since, pg_check)


NN = "NOT NULL"
TABLES: Final = (
    Table("meta", (_c("key text PRIMARY KEY"), _c(f"value text {NN}"))),
    Table("regions", (
        _c("idx int PRIMARY KEY"), _c(f"code int {NN} UNIQUE"), _c(f"name_zh text {NN}"),
        _c(f"name_en text {NN}"), _c(f"province int {NN}"), _c(f"grp text {NN}"),
        _c(f"elderly_age int {NN}"), _c(f"elderly_pct int {NN}"), _c(f"disabled_pct int {NN}"),
        _c(f"transfer_minutes int {NN}"), _c(f"transfer_discount_fen int {NN}"),
        _c(f"med_deductible_fen int {NN}"), _c(f"med_ratio_pct int {NN}"),
        _c(f"med_cap_fen int {NN}"))),
    Table("operators", (
        _c("idx int PRIMARY KEY"), _c(f"code text {NN} UNIQUE"), _c(f"name text {NN}"),
        _c(f"kind int {NN}"), _c(f"region_idx int {NN} REFERENCES regions(idx)"),
        _c(f"flat_fare_fen int {NN}"), _c("fare_rule text"))),
    Table("stations", (
        _c("id int PRIMARY KEY"), _c(f"operator_idx int {NN} REFERENCES operators(idx)"),
        _c(f"line text {NN}"), _c(f"name text {NN}"), _c(f"km real {NN}"))),
    Table("catalogue", (
        _c("code text PRIMARY KEY"), _c(f"idx int {NN} UNIQUE"), _c(f"name_zh text {NN}"),
        _c(f"name_en text {NN}"), _c(f"domain text {NN}"), _c(f"functions int {NN}"),
        _c(f"scope text {NN}"), _c(f"daily_limit_fen int {NN}"), _c(f"active int {NN}"),
        _c(f"version int {NN}"))),
    Table("catalogue_history", (
        _c("version int PRIMARY KEY"), _c(f"code text {NN}"), _c(f"change text {NN}"),
        _c(f"operator text {NN}"), _c(f"at text {NN}"))),
    Table("policies", (
        _c("idx int PRIMARY KEY"), _c(f"name text {NN}"), _c(f"base_fen int {NN}"),
        _c(f"rules text {NN}"))),
    Table("surnames", (_c("idx int PRIMARY KEY"), _c(f"surname text {NN}"))),
    Table("terminals", (
        _c("idx int PRIMARY KEY"), _c(f"tid text {NN} UNIQUE"), _c(f"merchant text {NN}"),
        _c(f"kind int {NN}"), _c(f"protocol int {NN}"),
        _c(f"region_idx int {NN} REFERENCES regions(idx)"), _c("operator_idx int"),
        _c("station_id int"), _c(f"mac_alg int {NN}"), _c(f"permitted int {NN}"),
        _c(f"tmk_wrapped blob {NN}"), _c(f"name text {NN}"), _c(f"place text {NN}"),
        _c(f"app_code text {NN} REFERENCES catalogue(code)"), _c(f"policy_idx int {NN}"),
        _c(f"scope int {NN}"))),
    Table("cards", (
        _c("idx int PRIMARY KEY"), _c(f"pan_hmac blob {NN} UNIQUE"), _c(f"pan_enc blob {NN}"),
        _c(f"account int {NN}"), _c(f"holder_name blob {NN}"), _c(f"id_number blob {NN}"),
        _c(f"bank text {NN}"), _c(f"kind text {NN} DEFAULT 'chip'"))),
    Table("filings", (
        _c(f"account int {NN}"), _c(f"province int {NN}"), _c(f"operator text {NN}"),
        _c(f"at text {NN}")), primary_key="account, province"),
    Table("programmes", (
        _c("idx int PRIMARY KEY"), _c(f"code text {NN} UNIQUE"), _c(f"name_zh text {NN}"),
        _c(f"name_en text {NN}"))),
    Table("disbursements", (
        _c(f"programme int {NN}"), _c(f"period int {NN}"), _c(f"pan_hmac blob {NN}"),
        _c(f"card text {NN}"), _c(f"amount_fen int {NN}"), _c(f"result text {NN}"),
        _c("record_no int"), _c(f"operator text {NN}"), _c(f"at text {NN}")),
        primary_key="programme, period, pan_hmac"),
    Table("admin_log", (
        _c("id int PRIMARY KEY"), _c(f"at text {NN}"), _c(f"operator text {NN}"),
        _c(f"role text {NN}"), _c(f"action text {NN}"), _c(f"target text {NN}"),
        _c(f"details text {NN}"), _c("record_no int"))),
    # A row: n records of 80 bytes (protocols/JOURNAL.md) numbered from first_no, all of the
    # China calendar day ``day``, of the record kinds in the bit mask ``kinds``.
    Table("journal", (
        _c("first_no int PRIMARY KEY", pg_check="first_no >= 0"),
        _c(f"n int32 {NN}", pg_check="n > 0"), _c(f"ts_us int {NN}"),
        _c(f"records blob {NN}", pg_check="octet_length(records) = 80 * n"),
        _c(f"format int16 {NN}"), _c("day int", since=5), _c("kinds int", since=5))),
)
INDEXES: Final = (
    Index("cards_account", "cards", "account"),
    Index("journal_day", "journal", "day, kinds", since=5),
)
NAMES: Final = tuple(t.name for t in TABLES)   # in an order that satisfies the foreign keys


def _column(c: Column, dialect: int) -> str:
    text = " ".join(p for p in (c.name, TYPES[c.type][dialect], c.constraints) if p)
    return f"{text} CHECK ({c.pg_check})" if dialect and c.pg_check else text


def create_table(t: Table, dialect: int, version: int = SCHEMA_VERSION) -> str:
    """CREATE TABLE for SQLite (dialect 0: IF NOT EXISTS) or PostgreSQL (1), as of
    ``version``."""
    parts = [_column(c, dialect) for c in t.columns if c.since <= version]
    if t.primary_key:
        parts.append(f"PRIMARY KEY ({t.primary_key})")
    head = "CREATE TABLE IF NOT EXISTS" if dialect == 0 else "CREATE TABLE"
    return f"{head} {t.name} ({', '.join(parts)})"


def create_index(i: Index, dialect: int) -> str:
    head = "CREATE INDEX IF NOT EXISTS" if dialect == 0 else "CREATE INDEX"
    return f"{head} {i.name} ON {i.table} ({i.columns})"


def statements(dialect: int, version: int = SCHEMA_VERSION) -> list[str]:
    """Every table, then every index of an empty store at ``version``, in one dialect."""
    return ([create_table(t, dialect, version) for t in TABLES]
            + [create_index(i, dialect) for i in INDEXES if i.since <= version])


def table(name: str) -> Table:
    return TABLES[NAMES.index(name)]


def _check() -> None:
    seen = set()
    for t in TABLES:
        assert t.name not in seen, t.name
        seen.add(t.name)
        assert len({c.name for c in t.columns}) == len(t.columns), t.name
        for c in t.columns:
            assert c.type in TYPES, (t.name, c.name, c.type)
            assert 1 <= c.since <= SCHEMA_VERSION, (t.name, c.name)
    for i in INDEXES:
        cols = {c.name for c in table(i.table).columns}
        assert all(col.strip() in cols for col in i.columns.split(",")), i


_check()
