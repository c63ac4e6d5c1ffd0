"""``onecard db status``: what a PostgreSQL store holds, read in one snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from onecard.switch.store.pg.connect import one_row
from onecard.switch.store.pg.journal import journal_end
from onecard.switch.store.pg.migrate import schema_version
from onecard.switch.store.pg.schema import FILE_TABLES, TABLES

if TYPE_CHECKING:
    import psycopg


@dataclass
class Status:
    server: str = ""                       # PostgreSQL version and the address answering
    schema_version: int | None = None
    journal_end: int = 0                   # next record number
    rows: dict[str, int] = field(default_factory=dict)
    lease_epoch: int | None = None
    encrypted: bool = False                # meta holds a wrapped data key


def read_status(pg: psycopg.Connection) -> Status:
    status = Status()
    with pg.transaction():
        pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        (version,) = one_row(pg.execute("SHOW server_version"))
        info = pg.info
        status.server = f"PostgreSQL {version} at {info.host}:{info.port}/{info.dbname}"
        status.schema_version = schema_version(pg)
        if status.schema_version is None:
            return status
        for table in TABLES + FILE_TABLES:
            (status.rows[table],) = one_row(pg.execute(f"SELECT count(*) FROM {table}"))
        status.journal_end = journal_end(pg)
        row = pg.execute("SELECT epoch FROM lease").fetchone()
        status.lease_epoch = int(row[0]) if row else None
        status.encrypted = pg.execute("SELECT 1 FROM meta WHERE key = 'dek_wrapped'"
                                      ).fetchone() is not None
    return status
