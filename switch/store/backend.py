"""Which store a switch reads and writes its tables in: the embedded SQLite database in
data_dir, or PostgreSQL at ``[store] dsn`` (``config.store.backend``). Both answer the same
``sqlite3``-style calls (``switch/store/pg/db.py``), so the admin API and the loader's queries are
written once."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from onecard.switch.store import sqlite

if TYPE_CHECKING:
    from onecard.switch.config import Config
    from onecard.switch.store.pg.db import Db


def is_postgresql(config: Config) -> bool:
    return config.store.backend == "postgresql"


def open_db(config: Config, *, synchronous: str | None = None,
            fence_epoch: int | None = None) -> sqlite3.Connection | Db:
    """A read-write, autocommit connection to the configured store (callers begin and commit
    explicitly). ``synchronous`` overrides ``[store] synchronous`` for SQLite; PostgreSQL's
    durability is the server's (synchronous_commit), and its writes are fenced at the
    switch's lease epoch when ``fence_epoch`` is given."""
    if is_postgresql(config):
        from onecard.switch.store.pg.db import open_db as open_pg

        return open_pg(config.store.dsn, fence_epoch)
    return sqlite.connect(sqlite.db_path(config.data_dir),
                         synchronous=synchronous or config.store.synchronous)


@contextmanager
def transaction(conn: sqlite3.Connection | Db) -> Iterator[None]:
    """BEGIN ... COMMIT on an autocommit connection of either store, ROLLBACK if the block
    raises. Without the ROLLBACK a failed statement would leave PostgreSQL's transaction
    aborted, and every later query on the admin API's one connection refused."""
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
