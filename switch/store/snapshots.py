"""Checkpoints of the core's mutable arrays, as .npy files in a directory per checkpoint.

A checkpoint taken when the journal's next record number was ``upto`` holds the state with
every record below ``upto`` applied. It is handed to the writer here only once those records
are durable, so recovery = newest checkpoint + journal records from ``upto`` on.
Files live beside the database rather than in it so that writing hundreds of megabytes never
holds SQLite's write lock against group commits.
With the PostgreSQL store the same sealed bytes go into its ``checkpoints`` table instead
(``switch/store/pg/checkpoints.py``, ``Checkpointer(dsn=...)``), so that a switch starts from the
store alone.

The idempotency horizon (core/horizon.pyx) is the one part that grows all day (tens of millions
of rows at a province's scale), so a checkpoint does not copy it whole: it writes a *segment*,
the rows filed or changed since the last checkpoint written, and names in
``horizon_chain`` the earlier segments that, loaded oldest first, give the rest. A checkpoint
directory carries those as hard links (``horizon_rows@UPTO.sealed``: no bytes copied, and the
directory stays self-contained for backups, imports and pruning); PostgreSQL keeps their rows
while a kept checkpoint's chain names them. A segment leaves the chain once every date it
holds has left the horizon.

Every array is sealed under the data set's data key (``security/sealed_files.py``): the cards
hold card numbers and the terminals master and working keys, which are never on disk in clear.
The associated data names the checkpoint and the array, so a file copied into another
checkpoint does not open. A checkpoint written before encryption (``<name>.npy``) is still
read, and sealed in place by ``seal_clear`` (the store migration to schema 4, and every load).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onecard.core.commit import GroupCommitter
from onecard.switch import logs
from onecard.switch.security import modes, sealed_files
from onecard.switch.security.keystore import DataKeys
from onecard.switch.store.chain import (
    NOT_WRITTEN,
    SEGMENT,
    carried_name,
    chain_of,
    horizon_chain,
    label,
)

if TYPE_CHECKING:
    from onecard.switch.store.pg.checkpoints import Fence

log = logging.getLogger("onecard.snapshots")

ARRAYS = ("cards", "accounts", "terminals", "ring")
SEALED = ".sealed"
PREFIX = "snapshot-"
WAL_FRAME_HEADER = 24                   # bytes before each page in a SQLite WAL frame


def snapshot_root(data_dir: str | Path) -> Path:
    return Path(data_dir) / "snapshots"


def fsync_path(path: Path) -> None:
    """fsync a directory or a file someone else writes (a read-only descriptor is enough)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _carry(tmp: Path, data_dir: str | Path, chain: list[tuple[int, int]],
           upto: int) -> list[str]:
    """Hard-link the earlier segments of ``chain`` from the newest checkpoint into ``tmp``;
    their array names. OSError if one is not there (the chain is then broken: the caller
    writes the horizon whole next)."""
    found = newest(data_dir)
    names = []
    for carried, _ in chain:
        if carried == upto:
            continue
        if found is None:
            raise FileNotFoundError(f"horizon segment {carried}: no checkpoint to carry it from")
        for base in SEGMENT:
            name = carried_name(base, carried)
            os.link(found[1] / f"{base if found[0] == carried else name}{SEALED}",
                    tmp / f"{name}{SEALED}")
            names.append(name)
    return names


def write(data_dir: str | Path, arrays: dict[str, np.ndarray], upto: int, keys: DataKeys, *,
          keep: int = 2) -> Path:
    """Write a checkpoint durably and atomically, sealed; prune all but the newest ``keep``."""
    root = modes.private_dir(snapshot_root(data_dir))
    final = root / f"{PREFIX}{upto:016d}"
    if final.exists():
        return final
    tmp = root / f".tmp-{upto:016d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    modes.private_dir(tmp)
    arrays = {name: arr for name, arr in arrays.items() if name not in NOT_WRITTEN}
    try:
        carried = _carry(tmp, data_dir, chain_of(upto, arrays), upto)
        for name, arr in arrays.items():
            sealed_files.write_array(tmp / f"{name}{SEALED}", arr, keys, label(upto, name))
        with modes.open_private(tmp / "manifest.json", "w") as f:
            json.dump({"upto": upto, "arrays": sorted([*arrays, *carried]), "sealed": True}, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_path(tmp)
        os.rename(tmp, final)
    except OSError:
        # E.g. a full disk: give the space back to the journal, which needs it more.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(root)
    for old in sorted(root.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _read(path: Path, upto: int, name: str, keys: DataKeys) -> np.ndarray:
    sealed = path / f"{name}{SEALED}"
    if sealed.exists():
        return sealed_files.read_array(sealed, keys, label(upto, name))
    return np.load(path / f"{name}.npy", allow_pickle=False)     # before encryption


def newest(data_dir: str | Path) -> tuple[int, Path, list[str]] | None:
    """The newest complete checkpoint's upto, directory and array names (nothing opened), or
    None."""
    root = snapshot_root(data_dir)
    for path in sorted(root.glob(f"{PREFIX}*"), reverse=True):
        manifest = path / "manifest.json"
        if not manifest.exists():
            continue
        meta = json.loads(manifest.read_text())
        return int(meta["upto"]), path, list(meta["arrays"])
    return None


def latest(data_dir: str | Path, keys: DataKeys) -> tuple[int, dict[str, np.ndarray]] | None:
    """The newest complete checkpoint: (upto, arrays), or None."""
    found = newest(data_dir)
    if found is None:
        return None
    upto, path, names = found
    return upto, {name: _read(path, upto, name, keys) for name in names}


def seal_clear(data_dir: str | Path, keys: DataKeys) -> int:
    """Seal the arrays of checkpoints written before encryption (atomically, file by file);
    how many. A crash halfway leaves each array either clear or sealed, both readable."""
    sealed = 0
    for path in sorted(snapshot_root(data_dir).glob(f"{PREFIX}*")):
        manifest = path / "manifest.json"
        if not manifest.exists():
            continue
        upto = int(json.loads(manifest.read_text())["upto"])
        for clear in sorted(path.glob("*.npy")):
            tmp = clear.with_suffix(".tmp")
            sealed_files.write_array(tmp, np.load(clear, allow_pickle=False), keys,
                                     label(upto, clear.stem))
            os.rename(tmp, clear.with_suffix(SEALED))
            clear.unlink()
            sealed += 1
        fsync_path(path)
    return sealed


class Checkpointer(threading.Thread):
    """Background housekeeping that must never hold up a commit: publishing checkpoints
    (handed over only once the journal covers them) and copying the SQLite WAL into the
    database once it has grown past ``wal_limit_bytes``. Copying competes with commits for
    the disk, so it is done rarely and in large steps rather than every few pages.

    The copying is PASSIVE (the writer, which runs with autocheckpoint off, is never
    blocked). Under steady load that alone never finishes: commits add frames while it
    copies, and SQLite only starts the WAL over once every frame is in the database. So,
    given the ``committer``, it repeats the copy until only a few frames are left and then
    asks the writer to copy those between two of its commits (a pause of a millisecond or
    so); the WAL then stays near ``wal_limit_bytes`` and is rewritten in place.

    With the PostgreSQL store (``dsn``) it only publishes checkpoints, into the store.

    It keeps the horizon's chain of segments (``horizon_chain``): each checkpoint written
    adds its own, and hands its ``horizon_mark`` back in ``confirmed`` for the loop
    to confirm in the core, so the next segment starts after it. One that is not written
    is not confirmed (its rows go into the next segment), and the next is written whole
    (``horizon_whole``), so a broken chain never outlives one checkpoint."""

    CATCH_UP_FRAMES = 256               # what is left for the writer (1 MiB of 4 KiB pages)
    MAX_PASSES = 8                      # copies a round; if the writer outran them, next round

    def __init__(self, data_dir: Path, db_path: Path | None, keep: int, *,
                 keys: DataKeys | None = None, wal_limit_bytes: int = 16 << 20,
                 wal_interval_s: float = 1.0, committer: GroupCommitter | None = None,
                 dsn: str | None = None, fence: Fence | None = None,
                 horizon_chain: list[tuple[int, int]] | None = None) -> None:
        """With ``dsn`` checkpoints go to the PostgreSQL store's ``checkpoints`` table on a
        connection of the thread's own (``fence``, if given, runs in each checkpoint's
        transaction: ``pg/checkpoints.write``), and there is no WAL to copy: ``db_path``,
        ``wal_*`` and ``committer`` are unused. Without it, files under data_dir and
        the SQLite WAL copying, as always."""
        super().__init__(name="onecard-checkpoint", daemon=True)
        self._dsn = dsn
        self._fence = fence
        self._data_dir = data_dir
        self._db_path = db_path
        self._keep = keep
        self._keys = keys
        self._wal_interval_s = wal_interval_s
        self._wal_limit_bytes = wal_limit_bytes
        self._wal_path = Path(f"{db_path}-wal")
        self._committer = committer
        self._cond = threading.Condition()
        self._request: tuple[int, dict[str, np.ndarray]] | None = None
        self._stopping = False
        self.busy = False
        self.last_upto = -1
        self.written = 0                    # checkpoints published (metrics)
        self.failed = 0
        self.last_duration_s = 0.0
        self.last_at_s = 0.0                # unix time of the last one published
        self.chain = list(horizon_chain or [])
        self.confirmed: collections.deque[np.ndarray] = collections.deque()
        self.horizon_whole = False

    def submit(self, upto: int, arrays: dict[str, np.ndarray]) -> None:
        """Publish this checkpoint; records below ``upto`` must already be durable."""
        with self._cond:
            self._request = (upto, arrays)
            self.busy = True
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def _next(self, timeout_s: float | None) -> tuple[tuple | None, bool]:
        """The checkpoint asked for (or None after timeout_s) and whether to stop."""
        with self._cond:
            self._cond.wait_for(lambda: self._request is not None or self._stopping, timeout_s)
            request, self._request = self._request, None
            return request, self._stopping

    def run(self) -> None:
        if self._dsn:
            self._run_postgresql()
            return
        assert self._db_path is not None, "the embedded store's checkpoints: pass db_path"
        conn = sqlite3.connect(self._db_path, isolation_level=None, check_same_thread=False)
        frame_bytes = conn.execute("PRAGMA page_size").fetchone()[0] + WAL_FRAME_HEADER
        try:
            while True:
                request, stopping = self._next(self._wal_interval_s)
                if request is not None:
                    self._publish(*request)
                if stopping or self._wal_bytes(frame_bytes) > self._wal_limit_bytes:
                    try:
                        self._copy_wal(conn)
                    except sqlite3.Error as exc:   # retried next round; the WAL only grows
                        log.warning("WAL checkpoint failed: %s", exc)
                if stopping and request is None:
                    return
        finally:
            conn.close()

    def _run_postgresql(self) -> None:
        """Publish each checkpoint asked for until stopped (a last one asked for before the
        stop is still written). A failed connection is opened again for the next."""
        pg = None
        try:
            while True:
                request, stopping = self._next(None)
                if request is not None:
                    pg = self._publish_postgresql(pg, *request)
                if stopping and request is None:
                    return
        finally:
            if pg is not None:
                pg.close()

    def _publish_postgresql(self, pg, upto: int, arrays: dict[str, np.ndarray]):
        """Write one checkpoint; the connection to use next (None after a failure)."""
        from onecard.switch.store.pg import checkpoints
        from onecard.switch.store.pg.connect import connect, one_line, store_errors

        assert self._keys is not None, "checkpoints are written sealed: pass keys"
        assert self._dsn is not None                # run writes to PostgreSQL only with one
        began = time.monotonic()
        try:
            if pg is None or pg.closed:
                pg = connect(self._dsn, autocommit=True)
            arrays, chain = self._chained(upto, arrays)
            wrote = checkpoints.write(pg, arrays, upto, self._keys, self._keep, fence=self._fence)
            self._adopt(wrote, chain, arrays)
            self._done(upto, began)
        except store_errors() as exc:
            # As on SQLite: the journal still holds everything, the next start replays more.
            self.horizon_whole = True
            self._done(upto, began, one_line(exc))
            if pg is not None:
                pg.close()
            pg = None
        finally:
            self.busy = False
        return pg

    def _wal_bytes(self, frame_bytes: int) -> int:
        if self._committer is not None:     # the file keeps its size once rewritten in place
            return self._committer.wal_frames * frame_bytes
        try:
            return self._wal_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _copy_wal(self, conn: sqlite3.Connection) -> None:
        # The pragma's frame count is the WAL as this connection saw it when it started; the
        # committer's count is where the writer is now.
        for _ in range(self.MAX_PASSES):
            _busy, _frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if self._committer is None:
                return
            left = self._committer.wal_frames - copied
            if left <= self.CATCH_UP_FRAMES:
                break
        else:
            return                      # the writer outran every pass: try next round
        if left > 0:
            # SQLite syncs the database only after a pass that copied everything, which no
            # pass here does under load: flush the copied pages now, so the writer's own sync
            # at the end of its short copy has little left to write.
            assert self._db_path is not None        # copying the WAL: the embedded store
            fsync_path(self._db_path)
            self._committer.request_catch_up()

    def _publish(self, upto: int, arrays: dict[str, np.ndarray]) -> None:
        assert self._keys is not None, "checkpoints are written sealed: pass keys"
        began = time.monotonic()
        try:
            arrays, chain = self._chained(upto, arrays)
            existed = (snapshot_root(self._data_dir) / f"{PREFIX}{upto:016d}").exists()
            write(self._data_dir, arrays, upto, self._keys, keep=self._keep)
            self._adopt(not existed, chain, arrays)
            self._done(upto, began)
        except OSError as exc:
            # The journal still holds everything; a failed checkpoint only makes the next
            # recovery replay more.
            self.horizon_whole = True
            self._done(upto, began, str(exc))
        finally:
            self.busy = False

    def _chained(self, upto: int, arrays: dict[str, np.ndarray]
                 ) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
        """The arrays with this checkpoint's ``horizon_chain`` (if it has a horizon), and the
        chain."""
        if "horizon_gens" not in arrays:
            return arrays, self.chain
        chain = horizon_chain(arrays, upto, self.chain)
        return {**arrays, "horizon_chain": np.array(chain, dtype=np.uint64).reshape(-1, 2)}, chain

    def _adopt(self, wrote: bool, chain: list[tuple[int, int]],
               arrays: dict[str, np.ndarray]) -> None:
        """A checkpoint is written (or was there already, from an earlier process: then its
        segment is not this horizon's, and nothing is confirmed)."""
        if not wrote or "horizon_mark" not in arrays:
            return
        self.chain = chain
        if arrays["horizon_mark"][1]:
            self.horizon_whole = False
        self.confirmed.append(arrays["horizon_mark"])

    def _done(self, upto: int, began: float, error: str | None = None) -> None:
        """Count and log a checkpoint written (or failed)."""
        took = time.monotonic() - began
        fields = logs.extra("checkpoint", upto=upto, seconds=round(took, 3), error=error)
        if error is not None:
            self.failed += 1
            log.error("checkpoint at journal record %d failed: %s", upto, error, extra=fields)
            return
        self.last_upto, self.written = upto, self.written + 1
        self.last_duration_s, self.last_at_s = took, time.time()
        log.info("checkpoint at journal record %d written in %.2f s%s", upto, took,
                 " to PostgreSQL" if self._dsn else "", extra=fields)
