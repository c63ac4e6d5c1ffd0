"""Which store a switch reads and writes its tables in: the embedded SQLite database in
data_dir, or PostgreSQL at ``[store] dsn`` (``config.store.backend``). Both answer the same
``sqlite3``-style calls (``switch/store/pg/db.py``), so the admin API and the loader's queries
are written once; what differs (the journal's writer, where checkpoints go, replication) is a
method of ``Store``, which the server opens once (``open_store``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onecard.core.commit import GroupCommitter
from onecard.switch.store import sqlite
from onecard.switch.store.snapshots import Checkpointer

if TYPE_CHECKING:
    from onecard.switch.config import Config
    from onecard.switch.store.loader import Loaded
    from onecard.switch.store.pg.committer import PgCommitter
    from onecard.switch.store.pg.db import Db
    from onecard.switch.store.pg.lease import Lease
    from onecard.switch.store.pg.replication import ReplicationMonitor


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


class Store:
    """The configured store, opened once by the server: everything that differs between the
    embedded SQLite database and PostgreSQL is a method here, so the runtime never asks which
    one it has. Connections are opened per use (the writers own theirs)."""

    name = ""

    def __init__(self, config: Config) -> None:
        self.config = config

    def open_db(self, *, fence_epoch: int | None = None) -> sqlite3.Connection | Db:
        """A read-write, autocommit connection (``open_db``)."""
        return open_db(self.config, fence_epoch=fence_epoch)

    def records_since(self, upto: int) -> tuple[np.ndarray, np.ndarray]:
        """Every journal record numbered ``upto`` or later, and their numbers."""
        raise NotImplementedError

    def writers(self, efd: int, loaded: Loaded,
                lease: Lease | None) -> tuple[GroupCommitter | PgCommitter, Checkpointer]:
        """The journal's writer (signalling ``efd`` after each commit) and the checkpoints'
        writer, from the state the switch loaded."""
        raise NotImplementedError

    def replication(self) -> ReplicationMonitor | None:
        """A monitor of the standbys the store replicates to, when it has any."""
        return None


class SqliteStore(Store):
    name = "sqlite"

    def records_since(self, upto: int) -> tuple[np.ndarray, np.ndarray]:
        conn = sqlite.connect(sqlite.db_path(self.config.data_dir), readonly=True)
        try:
            return sqlite.journal_records(conn, upto)
        finally:
            conn.close()

    def writers(self, efd: int, loaded: Loaded,
                lease: Lease | None) -> tuple[GroupCommitter, Checkpointer]:
        st, path = self.config.store, sqlite.db_path(self.config.data_dir)
        committer = GroupCommitter(str(path), efd, loaded.next_record_no,
                                   synchronous=st.synchronous, full_retry_ms=st.full_retry_ms)
        return committer, Checkpointer(Path(self.config.data_dir), path, st.snapshots_kept,
                                       keys=loaded.keys,
                                       wal_limit_bytes=st.wal_checkpoint_mb << 20,
                                       committer=committer, horizon_chain=loaded.horizon_chain)


class PgStore(Store):
    """PostgreSQL at ``[store] dsn``; written under the switch's lease (``pg/lease.py``)."""

    name = "postgresql"

    def records_since(self, upto: int) -> tuple[np.ndarray, np.ndarray]:
        from onecard.switch.store.pg import journal as pg_journal

        db = self.open_db()
        try:
            return sqlite.records_of(pg_journal.journal_rows(db.pg, upto), upto)
        finally:
            db.close()

    def writers(self, efd: int, loaded: Loaded,
                lease: Lease | None) -> tuple[PgCommitter, Checkpointer]:
        from onecard.switch.store.pg import lease as pg_lease
        from onecard.switch.store.pg.committer import PgCommitter

        assert lease is not None, "the PostgreSQL store is written under a lease"
        st = self.config.store
        committer = PgCommitter(st.dsn, efd, loaded.next_record_no, lease.epoch,
                                in_flight=st.commits_in_flight,
                                commit_timeout_s=st.commit_timeout_s,
                                failover_timeout_s=st.failover_timeout_s)
        return committer, Checkpointer(Path(self.config.data_dir), None, st.snapshots_kept,
                                       keys=loaded.keys, dsn=st.dsn,
                                       fence=pg_lease.fence(lease.epoch),
                                       horizon_chain=loaded.horizon_chain)

    def replication(self) -> ReplicationMonitor:
        from onecard.switch.store.pg.replication import ReplicationMonitor

        return ReplicationMonitor(self.config.store.dsn)


def open_store(config: Config) -> Store:
    return PgStore(config) if is_postgresql(config) else SqliteStore(config)
