"""``onecard db import``: an embedded (SQLite) data set into the PostgreSQL store.

Everything moves in one PostgreSQL transaction, read from one SQLite read transaction (a
consistent snapshot even while a switch writes the source): reference tables and the journal,
by binary COPY, bytes as they are. Nothing is decrypted: card numbers stay sealed, master
keys wrapped, and ``meta`` (with the data key wrapped by the key-encryption key) is copied as
it is, so the same KEK opens the imported data set. The newest checkpoint's sealed arrays and
the sealed holders file go into ``checkpoints`` and ``files`` as the files hold them (nothing
opened), so that a switch can start from PostgreSQL alone; a data set without a checkpoint is
refused. Before COMMIT the target is checked against the source: row counts per table, a
SHA-256 of the journal's rows in order, and a SHA-256 of each sealed file.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from onecard.switch.security import holders_file
from onecard.switch.store import snapshots, sqlite, staged
from onecard.switch.store.loader import HOLDERS_FILE
from onecard.switch.store.pg.connect import PgError, one_row
from onecard.switch.store.pg.migrate import LOCK_KEY, migrate, require_current
from onecard.switch.store.pg.schema import FILE_TABLES, LEASE_TABLE, SCHEMA_VERSION, TABLES

if TYPE_CHECKING:
    import psycopg

# Rows fetched from SQLite at a time, and how often a big table reports progress.
FETCH_ROWS: Final = 10_000
PROGRESS_ROWS: Final = 100_000
# A journal row's fields as the digest sees them (first_no, n, ts_us, format), little-endian.
JOURNAL_HEADER: Final = struct.Struct("<qiqh")

Progress = Callable[[str, int, int], None]      # table, rows copied, rows in the table


@dataclass
class ImportResult:
    rows: dict[str, int] = field(default_factory=dict)       # table: rows (equal both sides)
    journal_sha256: str = ""
    journal_end: int = 0                                      # next record number
    replaced: bool = False
    checkpoint_upto: int = 0
    # Sealed files copied, by table and name: their SHA-256 (equal both sides).
    sealed: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class SealedFiles:
    """The sealed files of a data set to import, read before its SQLite snapshot: a switch
    running on it only writes a checkpoint whose records are already committed, so the
    snapshot's journal reaches at least this checkpoint even if a newer one appears."""
    upto: int
    blobs: dict[tuple[str, str], bytes]         # (table, name): the file's bytes



def journal_digest(rows: Iterable[tuple[int, int, int, bytes, int]]) -> tuple[str, int]:
    """SHA-256 over the journal's rows in first_no order (each its fields and records), and
    the journal's end; the same function reads both sides."""
    digest, end = hashlib.sha256(), 0
    for first_no, n, ts_us, records, fmt in rows:
        assert first_no == end, f"journal gap or overlap at record {end} (row {first_no})"
        digest.update(JOURNAL_HEADER.pack(first_no, n, ts_us, fmt))
        digest.update(records)
        end = first_no + n
    return digest.hexdigest(), end


def _source(data_dir: Path) -> sqlite3.Connection:
    path = sqlite.db_path(data_dir)
    if not path.exists():
        raise PgError(f"{data_dir}: no data set ({path.name} not found)")
    conn = sqlite.connect(path, readonly=True)
    conn.isolation_level = None
    conn.execute("BEGIN")                 # one snapshot for every table
    found = sqlite.schema_version(conn)
    if found != SCHEMA_VERSION:
        conn.close()
        raise PgError(f"{path}: store schema {found or 'none'}, the import reads "
                      f"{SCHEMA_VERSION} (start this build's switch on it once to upgrade it)")
    tables = {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    unknown = tables - set(TABLES)
    if unknown:
        conn.close()
        raise PgError(f"{path}: tables this build does not import: {', '.join(sorted(unknown))}")
    return conn


def read_sealed_files(data_dir: Path) -> SealedFiles:
    """The newest checkpoint's arrays and the holders file, as their files hold them;
    PgError in one line when there is no checkpoint or a file is not sealed yet."""
    if not sqlite.db_path(data_dir).exists():
        raise PgError(f"{data_dir}: no data set ({sqlite.DB_NAME} not found)")
    # A data-key rotation stopped after its commit: its files, under the key the data set's
    # meta names, are put in place before they are copied.
    staged.finish_pending(data_dir)
    found = snapshots.newest(data_dir)
    if found is None:
        raise PgError(f"{data_dir}: no checkpoint under {snapshots.snapshot_root(data_dir)} "
                      "(the PostgreSQL store starts from one: run the switch on the data set "
                      "once, or make it with onecard demo-data)")
    upto, path, names = found
    blobs: dict[tuple[str, str], bytes] = {}
    for name in names:
        file = path / f"{name}{snapshots.SEALED}"
        if not file.exists():
            raise PgError(f"{path}: array {name} is not sealed yet (start this build's "
                          "switch on the data set once to seal it)")
        blobs["checkpoints", name] = file.read_bytes()
    holders = data_dir / HOLDERS_FILE
    if holders.exists() and holders.stat().st_size:
        if not holders_file.is_sealed(holders):
            raise PgError(f"{holders} is not sealed yet (start this build's switch on the "
                          "data set once to seal it)")
        blobs["files", HOLDERS_FILE] = holders.read_bytes()
    return SealedFiles(upto, blobs)


def _copy_sealed(pg: psycopg.Connection, files: SealedFiles, result: ImportResult) -> None:
    for (table, name), blob in files.blobs.items():
        if table == "checkpoints":
            pg.execute("INSERT INTO checkpoints (upto, name, data) VALUES (%s, %s, %b)",
                       (files.upto, name, blob))
        else:
            pg.execute("INSERT INTO files (name, data) VALUES (%s, %b)", (name, blob))
        result.sealed[table, name] = hashlib.sha256(blob).hexdigest()
    result.checkpoint_upto = files.upto


def _verify_sealed(pg: psycopg.Connection, result: ImportResult) -> None:
    """The sealed files' digests as the server computes them over what it holds."""
    found = {("checkpoints", name): digest for name, digest in pg.execute(
        "SELECT name, encode(sha256(data), 'hex') FROM checkpoints WHERE upto = %s",
        (result.checkpoint_upto,))}
    found |= {("files", name): digest for name, digest in pg.execute(
        "SELECT name, encode(sha256(data), 'hex') FROM files")}
    (others,) = one_row(pg.execute("SELECT count(*) FROM checkpoints WHERE upto != %s",
                                   (result.checkpoint_upto,)))
    if found != result.sealed or others:
        differ = [f"{t}/{n}" for t, n in sorted(set(found) | set(result.sealed))
                  if found.get((t, n)) != result.sealed.get((t, n))]
        raise PgError(f"import check: the sealed files differ in PostgreSQL "
                      f"({', '.join(differ) or f'{others} rows of other checkpoints'}); "
                      "nothing committed")
    if result.checkpoint_upto > result.journal_end:
        raise PgError(f"import check: the checkpoint is at record {result.checkpoint_upto}, "
                      f"past the journal's end {result.journal_end}; nothing committed")


def _target_rows(pg: psycopg.Connection) -> dict[str, int]:
    """Rows in each table of the target (meta without its schema_version row)."""
    rows = {}
    for table in TABLES:
        (rows[table],) = one_row(pg.execute(f"SELECT count(*) FROM {table}"))
    rows["meta"] -= 1
    for table in FILE_TABLES:
        (rows[table],) = one_row(pg.execute(f"SELECT count(*) FROM {table}"))
    return rows


def _columns(pg: psycopg.Connection, table: str) -> list[tuple[str, str]]:
    return pg.execute("SELECT column_name, udt_name FROM information_schema.columns "
                      "WHERE table_schema = current_schema() AND table_name = %s "
                      "ORDER BY ordinal_position", (table,)).fetchall()


def _copy_table(src: sqlite3.Connection, pg: psycopg.Connection, table: str,
                progress: Progress) -> int:
    """COPY one table, columns by name; the rows copied."""
    columns = _columns(pg, table)
    source_columns = {row[1] for row in src.execute(f"PRAGMA table_info({table})")}
    names = [name for name, _ in columns]
    if source_columns != set(names):
        raise PgError(f"table {table}: the data set's columns {sorted(source_columns)} are not "
                      f"the store's {sorted(names)}")
    (total,) = src.execute(f"SELECT count(*) FROM {table}").fetchone()
    cur = src.execute(f"SELECT {', '.join(names)} FROM {table}")
    copied, reported = 0, 0
    with pg.cursor().copy(f"COPY {table} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"
                          ) as copy:
        copy.set_types([udt for _, udt in columns])
        while batch := cur.fetchmany(FETCH_ROWS):
            for row in batch:
                copy.write_row(row)
            copied += len(batch)
            if copied - reported >= PROGRESS_ROWS:
                progress(table, copied, total)
                reported = copied
    assert copied == total, f"{table}: {copied} rows read, {total} counted"
    progress(table, copied, total)
    return copied


def _verify(src: sqlite3.Connection, pg: psycopg.Connection, result: ImportResult) -> None:
    for table, rows in result.rows.items():
        (found,) = one_row(pg.execute(f"SELECT count(*) FROM {table}"))
        if found != rows:
            raise PgError(f"import check: {table} has {found} rows in PostgreSQL, {rows} in "
                          "the data set (nothing committed)")
    source = src.execute("SELECT first_no, n, ts_us, records, format FROM journal "
                         "ORDER BY first_no")
    result.journal_sha256, result.journal_end = journal_digest(
        (a, b, c, bytes(d), e) for a, b, c, d, e in source)
    with pg.cursor(name="journal_check") as cur:         # server-side: streamed, not loaded
        cur.itersize = FETCH_ROWS
        cur.execute("SELECT first_no, n, ts_us, records, format FROM journal ORDER BY first_no")
        target, end = journal_digest(cur)
    if (target, end) != (result.journal_sha256, result.journal_end):
        raise PgError(f"import check: the journal differs (PostgreSQL sha256 {target[:16]}… to "
                      f"record {end}, the data set's {result.journal_sha256[:16]}… to "
                      f"{result.journal_end}); nothing committed")
    _verify_sealed(pg, result)


def import_data_set(data_dir: str | Path, pg: psycopg.Connection, *, replace: bool = False,
                    progress: Progress = lambda *_: None) -> ImportResult:
    """Copy the data set in data_dir into the store pg connects to, migrating it first; the
    rows and digest checked. A target that holds data is refused unless replace."""
    assert not pg.autocommit, "import: one transaction"
    migrate(pg)
    files = read_sealed_files(Path(data_dir))
    src = _source(Path(data_dir))
    result = ImportResult(replaced=replace)
    try:
        with pg.transaction():
            pg.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            require_current(pg)
            held = {t: n for t, n in _target_rows(pg).items() if n}
            if held and not replace:
                listed = ", ".join(f"{t} {n:,}" for t, n in held.items())
                raise PgError(f"the target already holds a data set ({listed} rows): "
                              "refusing to import over it without --replace")
            # The lease is not the data set's: its epoch only grows, whatever is imported.
            assert LEASE_TABLE not in TABLES + FILE_TABLES
            pg.execute(f"TRUNCATE {', '.join(TABLES + FILE_TABLES)}")
            for table in TABLES:
                result.rows[table] = _copy_table(src, pg, table, progress)
            _copy_sealed(pg, files, result)
            _verify(src, pg, result)
    finally:
        src.close()
    return result
