"""One incarnation of the switch under simulation: the real engine, journal, store,
checkpoints and recovery, with the commit side driven by the simulator.

Real: ``Engine.process`` on the frames the terminals built, ``Journal.take``, the store's
SQLite database (WAL, ``synchronous=FULL``) and its journal rows written with the same INSERT
as ``core/commit.pyx``, ``snapshots.write`` for checkpoints, ``loader.load`` for every start
and recovery (newest checkpoint + journal replay), SQLite's own crash recovery of the WAL.
Simulated: the group committer (one thread in the switch; here a queue committed when the
simulated disk says so, one row per commit), time (``Engine.clock_us``), the sockets (a
buffer per terminal connection), and the crash itself: the disk image (database, WAL,
checkpoints) is copied as it is at the crash instant, optionally with the last write torn,
and a new incarnation recovers from the copy.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onecard.core.engine import Engine
from onecard.core.journal import FORMAT
from onecard.protocols import journal_codec
from onecard.switch.errors import CommitFailed
from onecard.switch.store import loader, snapshots, sqlite

# The statement core/commit.pyx prepares (its row format is sqlite.py's).
JOURNAL_INSERT = (f"INSERT INTO journal (first_no, n, ts_us, records, format, day, kinds) "
                  f"VALUES (?, ?, ?, ?, {FORMAT}, ?, ?)")
RECORD_BYTES = 80
PAGES_UNLIMITED = 1 << 30
SNAPSHOTS_KEPT = 2


def _day_of(blob: bytes) -> tuple[int | None, int | None]:
    """The row's day and kinds; none for a row across midnight (one statement is one commit
    here, so it is not cut: a row without a day is read by every date)."""
    recs = np.frombuffer(blob, dtype=journal_codec.RECORD_DTYPE)
    return (None, None) if len(journal_codec.day_runs(recs)) > 1 else journal_codec.row_index(recs)


@dataclass
class Held:
    """Reply bytes waiting for their records: released once durable_no >= need_no."""
    need_no: int
    tid: str
    proto: int
    data: bytes


@dataclass
class Commit:
    """A journal row the simulated committer wrote."""
    first_no: int
    blob: bytes
    wal_bytes_before: int
    wal_bytes_after: int


class Node:
    """The switch process: engine + store connection + commit queue + held replies."""

    def __init__(self, data_dir: Path, *, map_entries_max: int, now_us: int) -> None:
        self.data_dir = Path(data_dir)
        self.db_path = sqlite.db_path(self.data_dir)
        # Opened before loading, read-write, as the switch's committer is: SQLite recovers a
        # WAL left by a crash on the first such open.
        self.conn = sqlite.connect(self.db_path)
        self.conn.execute("PRAGMA wal_autocheckpoint=0")     # as core/commit.pyx runs
        self.loaded = loader.load(self.data_dir, map_entries_max=map_entries_max)
        self.state = self.loaded.state
        self.engine = Engine(self.state, next_record_no=self.loaded.next_record_no)
        self.engine.clock_us = now_us
        self.durable_no = self.submitted_no = self.loaded.next_record_no
        self.queue: list[tuple[int, bytes]] = []             # submitted, not yet committed
        self.held: list[Held] = []
        self.inbound: dict[str, bytes] = {}                  # partial frames per connection
        self.pending_checkpoint: tuple[int, dict] | None = None
        self.last_checkpoint_no = self.loaded.snapshot_upto

    # ---- the request path ----------------------------------------------------------------

    def receive(self, tid: str, proto: int, data: bytes, now_us: int) -> tuple[int, int, bool]:
        """Bytes from a terminal's connection through the engine, as Connection.data_received
        does; the replies wait for durability. (first record no, end record no, close)."""
        buf = self.inbound.pop(tid, b"") + data
        first_no = self.engine.journal.next_no
        self.engine.clock_us = now_us
        consumed, replies, _batch, close = self.engine.process(proto, buf)
        assert 0 <= consumed <= len(buf), (consumed, len(buf))
        if consumed < len(buf) and not close:
            self.inbound[tid] = buf[consumed:]
        end_no = self.engine.journal.next_no
        if replies:
            self.held.append(Held(end_no, tid, proto, replies))
        self.submit()
        return first_no, end_no, close

    def submit(self) -> tuple[int, bytes] | None:
        """Take the journal's pending records for the committer (server.submit)."""
        if not self.engine.journal.pending:
            return None
        first_no, blob = self.engine.journal.take()
        assert first_no == self.submitted_no, (first_no, self.submitted_no)
        self.queue.append((first_no, blob))
        self.submitted_no = first_no + len(blob) // RECORD_BYTES
        return first_no, blob

    def releasable(self, *, early: bool = False) -> list[Held]:
        """Replies whose records are all durable, in order (server._durable); ``early``
        releases everything (a deliberately broken switch, for the checker's own test)."""
        limit = self.submitted_no if early else self.durable_no
        out = [h for h in self.held if h.need_no <= limit]
        self.held = [h for h in self.held if h.need_no > limit]
        return out

    # ---- the commit path -----------------------------------------------------------------

    def wal_bytes(self) -> int:
        try:
            return Path(f"{self.db_path}-wal").stat().st_size
        except FileNotFoundError:
            return 0

    def write_row(self, ts_us: int) -> Commit | None:
        """Write everything queued as one row, autocommitted with synchronous=FULL (the
        group committer's _commit). Not durable for the switch until acknowledge(): the
        simulator may crash in between. CommitFailed when the store refuses it (the queue
        is kept for a retry)."""
        if not self.queue:
            return None
        first_no = self.queue[0][0]
        blob = b"".join(b for _, b in self.queue)
        before = self.wal_bytes()
        try:
            self.conn.execute(JOURNAL_INSERT, (first_no, len(blob) // RECORD_BYTES, ts_us, blob,
                                               *_day_of(blob)))
        except sqlite3.OperationalError as exc:        # SQLITE_FULL: nothing was written
            raise CommitFailed(str(exc)) from exc
        return Commit(first_no, blob, before, self.wal_bytes())

    def acknowledge(self, commit: Commit) -> None:
        """The commit returned: its records are durable."""
        self.queue.clear()
        self.durable_no = commit.first_no + len(commit.blob) // RECORD_BYTES

    def disk_full(self, full: bool) -> None:
        """A full disk: SQLite may not grow the database by a page (real SQLITE_FULL)."""
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        self.conn.execute(f"PRAGMA max_page_count={pages if full else PAGES_UNLIMITED}")

    def copy_wal(self) -> None:
        """The background WAL checkpoint (snapshots.Checkpointer), in its TRUNCATE form."""
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    # ---- checkpoints -----------------------------------------------------------------------

    def checkpoint(self) -> int | None:
        """Copy the state now; publish it once its records are durable (server.checkpoint).
        The checkpoint's number if it was published now."""
        upto = self.engine.journal.next_no
        if upto == self.last_checkpoint_no:
            return None
        self.pending_checkpoint = (upto, self.state.snapshot())
        return self.publish_checkpoint()

    def publish_checkpoint(self) -> int | None:
        if self.pending_checkpoint is None or self.pending_checkpoint[0] > self.durable_no:
            return None
        upto, arrays = self.pending_checkpoint
        self.pending_checkpoint = None
        snapshots.write(self.data_dir, arrays, upto, self.loaded.keys, keep=SNAPSHOTS_KEPT)
        self.last_checkpoint_no = upto
        return upto

    def partial_checkpoint(self, rng_bytes: int) -> None:
        """A checkpoint cut short by a crash: a temporary directory with part of a file."""
        root = snapshots.snapshot_root(self.data_dir)
        tmp = root / f".tmp-{self.engine.journal.next_no:016d}-1"
        tmp.mkdir(parents=True, exist_ok=True)
        with open(tmp / "cards.npy", "wb") as f:
            np.save(f, self.state.cards[:16], allow_pickle=False)
            f.truncate(rng_bytes % 128)

    # ---- crash ---------------------------------------------------------------------------------

    def crash(self, image_dir: Path, *, wal_bytes: int | None = None) -> None:
        """Stop dead: copy the disk as it is now to image_dir (the WAL cut to wal_bytes when
        the last write was torn), then drop everything in memory."""
        image_dir.mkdir(parents=True)
        for item in sorted(self.data_dir.iterdir()):
            if item.name.endswith("-shm"):
                continue                      # shared memory, not on disk after a crash
            if item.is_dir():
                shutil.copytree(item, image_dir / item.name)
            else:
                shutil.copyfile(item, image_dir / item.name)
        if wal_bytes is not None:
            with open(image_dir / f"{sqlite.DB_NAME}-wal", "r+b") as f:
                f.truncate(wal_bytes)
        self.close()

    def close(self) -> None:
        """Drop this incarnation and its directory (after a crash its image lives on)."""
        self.conn.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def stop(self) -> None:
        """A graceful stop: everything committed, a final checkpoint, the store closed."""
        assert not self.queue, "stop with records not committed"
        self.checkpoint()
        self.publish_checkpoint()
        self.conn.close()
