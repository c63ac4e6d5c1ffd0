"""Which store a switch reads and writes its tables in: the embedded SQLite database in
data_dir, or PostgreSQL at ``[store] dsn`` (``config.store.backend``). Both answer the same
``sqlite3``-style calls (``switch/store/pg/db.py``), so the admin API and the loader's queries
are written once; what differs (the journal's writer, where checkpoints go, replication) is a
method of ``Store``, which the server opens once (``open_store``)."""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from onecard.core.commit import GroupCommitter
from onecard.core.journal import Journal
from onecard.switch.errors import StoreError
from onecard.switch.security import modes
from onecard.switch.sql import SqlConnection
from onecard.switch.store import sqlite
from onecard.switch.store.snapshots import Checkpointer

if TYPE_CHECKING:
    from onecard.switch.config import Config
    from onecard.switch.store.loader import Loaded
    from onecard.switch.store.pg.committer import PgCommitter
    from onecard.switch.store.pg.db import Db
    from onecard.switch.store.pg.lease import Lease
    from onecard.switch.store.pg.replication import ReplicationMonitor
    from onecard.switch.store.rotate_dek import Rotated

_Lock = TypeVar("_Lock")                 # what a lock function holds (the lock file)


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
def transaction(conn: SqlConnection) -> Iterator[None]:
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


class JournalWriter(Protocol):
    """What the switch asks of the journal's writer, whichever store it writes to:
    core/commit.pyx's GroupCommitter (SQLite) and pg/committer.py's PgCommitter both are one.
    It runs in a thread of its own (``run``), takes what the core appended (``submit``) and
    signals the switch's eventfd after each commit."""

    @property
    def submitted_no(self) -> int: ...
    @property
    def durable_no(self) -> int: ...
    @property
    def full_retries(self) -> int: ...

    def submit(self, journal: Journal) -> int: ...
    def run(self) -> None: ...
    def stop(self) -> None: ...
    def failure(self) -> str | None: ...
    def full_error(self) -> str | None: ...


class NotEmbedded(StoreError):
    """A command that works on the embedded store only, run on a PostgreSQL store."""


class Store(ABC):
    """The configured store, opened once by the server and by each command: everything that
    differs between the embedded SQLite database and PostgreSQL is a method here, so nothing
    else asks which one it has (tests/test_architecture.py). Connections are opened per use
    (the writers own theirs)."""

    name = ""
    dsn: str | None = None          # PostgreSQL's connection string (a clearing worker's)

    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)

    @abstractmethod
    def where(self) -> str:
        """The store, as an operator's message names it."""

    def only_embedded(self, command: str, instead: str) -> None:
        """Raise NotEmbedded (``onecard COMMAND: the store is PostgreSQL; INSTEAD``) for a
        command the embedded store alone has; nothing on the embedded store."""
        return None

    def prepare_local_dir(self) -> None:
        """The local data directory before the lock is taken in it (nothing to do when the
        store is in it: it is made with the data set)."""
        return None

    @abstractmethod
    def recover(self, options: dict,
                make_data_set: Callable[[], object]) -> tuple[Loaded, Lease | None]:
        """The state to serve from, and the lease it is written under (PostgreSQL).
        ``make_data_set`` fills an empty embedded store first (the demo data set)."""

    def offline_lock(self, lock: Callable[[Path], _Lock]) -> _Lock | None:
        """What an offline change (a data-key rotation) holds while it runs: the data
        directory's lock on SQLite; nothing on PostgreSQL, where it takes the lease."""
        return None

    @abstractmethod
    def rotate_dek(self, kek_file: str | None) -> Rotated:
        """A new data key, everything sealed under the old one sealed again (rotate_dek.py)."""

    def open_db(self, *, fence_epoch: int | None = None) -> sqlite3.Connection | Db:
        """A read-write, autocommit connection (``open_db``)."""
        return open_db(self.config, fence_epoch=fence_epoch)

    @abstractmethod
    def records_since(self, upto: int) -> tuple[np.ndarray, np.ndarray]:
        """Every journal record numbered ``upto`` or later, and their numbers."""

    @abstractmethod
    def writers(self, efd: int, loaded: Loaded,
                lease: Lease | None) -> tuple[JournalWriter, Checkpointer]:
        """The journal's writer (signalling ``efd`` after each commit) and the checkpoints'
        writer, from the state the switch loaded."""

    def replication(self) -> ReplicationMonitor | None:
        """A monitor of the standbys the store replicates to, when it has any."""
        return None


class SqliteStore(Store):
    name = "sqlite"

    def where(self) -> str:
        return str(self.data_dir)

    def recover(self, options: dict, make_data_set: Callable[[], object]) -> tuple[Loaded, None]:
        from onecard.switch.store import loader

        if not sqlite.db_path(self.data_dir).exists():
            make_data_set()
        return loader.load(self.data_dir, **options), None

    def offline_lock(self, lock: Callable[[Path], _Lock]) -> _Lock:
        return lock(self.data_dir)

    def rotate_dek(self, kek_file: str | None) -> Rotated:
        from onecard.switch.store import rotate_dek

        return rotate_dek.rotate(self.data_dir, kek_file)

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

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.dsn = config.store.dsn

    def where(self) -> str:
        return "the PostgreSQL store"

    def only_embedded(self, command: str, instead: str) -> None:
        raise NotEmbedded(f"onecard {command}: the store is PostgreSQL; {instead}")

    def prepare_local_dir(self) -> None:
        # The local directory keeps only what is this machine's: the lock and tokens files
        # (and, by default, the key-encryption key beside it).
        modes.private_dir(self.data_dir)

    def recover(self, options: dict,
                make_data_set: Callable[[], object]) -> tuple[Loaded, Lease]:
        from onecard.switch.store import loader
        from onecard.switch.store.pg import lease as pg_lease
        from onecard.switch.store.pg.journal import JournalGap

        st = self.config.store
        # Loaded first, read-only: a start that fails (a wrong key, a damaged checkpoint)
        # must not take the lease and so fence a switch that is serving.
        try:
            loaded = loader.load(self.data_dir, dsn=st.dsn, **options)
        except JournalGap:
            loaded = None              # rows past a gap: the takeover deletes them first
        lease = pg_lease.take_over(st.dsn, require_sync=st.require_sync_standby)
        if loaded is None or loaded.next_record_no != lease.journal_end:
            # The previous holder committed after our snapshot: read it again, under the
            # lease now (nothing else commits).
            loaded = loader.load(self.data_dir, dsn=st.dsn, **options)
        return loaded, lease

    def rotate_dek(self, kek_file: str | None) -> Rotated:
        from onecard.switch.store.pg import rotate as pg_rotate

        return pg_rotate.rotate(self.config.store.dsn, self.data_dir, kek_file)

    def records_since(self, upto: int) -> tuple[np.ndarray, np.ndarray]:
        from onecard.switch.store.pg import journal as pg_journal
        from onecard.switch.store.pg.db import open_db as open_pg

        db = open_pg(self.config.store.dsn, None)
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
