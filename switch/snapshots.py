"""Checkpoints of the core's mutable arrays, as .npy files in a directory per checkpoint.

A checkpoint taken when the journal's next record number was ``upto`` holds the state with
every record below ``upto`` applied. It is handed to the writer here only once those records
are durable, so recovery = newest checkpoint + journal records from ``upto`` on.
Files live beside the database rather than in it so that writing hundreds of megabytes never
holds SQLite's write lock against group commits.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger("onecard.snapshots")

ARRAYS = ("cards", "accounts", "terminals", "ring")
PREFIX = "snapshot-"


def snapshot_root(data_dir: str | Path) -> Path:
    return Path(data_dir) / "snapshots"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(data_dir: str | Path, arrays: dict[str, np.ndarray], upto: int, *,
          keep: int = 2) -> Path:
    """Write a checkpoint durably and atomically; prune all but the newest ``keep``."""
    root = snapshot_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{upto:016d}"
    if final.exists():
        return final
    tmp = root / f".tmp-{upto:016d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, arr in arrays.items():
        with open(tmp / f"{name}.npy", "wb") as f:
            np.save(f, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
    with open(tmp / "manifest.json", "w") as f:
        json.dump({"upto": upto, "arrays": sorted(arrays)}, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in sorted(root.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(data_dir: str | Path) -> tuple[int, dict[str, np.ndarray]] | None:
    """The newest complete checkpoint: (upto, arrays), or None."""
    root = snapshot_root(data_dir)
    for path in sorted(root.glob(f"{PREFIX}*"), reverse=True):
        manifest = path / "manifest.json"
        if not manifest.exists():
            continue
        meta = json.loads(manifest.read_text())
        arrays = {name: np.load(path / f"{name}.npy", allow_pickle=False)
                  for name in meta["arrays"]}
        return int(meta["upto"]), arrays
    return None


class Checkpointer(threading.Thread):
    """Background housekeeping that must never hold up a commit: publishing checkpoints
    (handed over only once the journal covers them) and copying the SQLite WAL into the
    database once it has grown past ``wal_limit_bytes`` (PASSIVE, so the writer is never
    blocked; the writer runs with autocheckpoint off). Copying the WAL competes with commits
    for the disk, so it is done rarely and in large steps rather than every few pages."""

    def __init__(self, data_dir: Path, db_path: Path, keep: int, *,
                 wal_limit_bytes: int = 64 << 20, wal_interval_s: float = 1.0) -> None:
        super().__init__(name="onecard-checkpoint", daemon=True)
        self._data_dir = data_dir
        self._db_path = db_path
        self._keep = keep
        self._wal_interval_s = wal_interval_s
        self._wal_limit_bytes = wal_limit_bytes
        self._wal_path = Path(f"{db_path}-wal")
        self._cond = threading.Condition()
        self._request: tuple[int, dict[str, np.ndarray]] | None = None
        self._stopping = False
        self.busy = False
        self.last_upto = -1

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

    def run(self) -> None:
        conn = sqlite3.connect(self._db_path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._request is not None or self._stopping,
                                        self._wal_interval_s)
                    request, self._request = self._request, None
                    stopping = self._stopping
                if request is not None:
                    self._publish(*request)
                if stopping or self._wal_bytes() > self._wal_limit_bytes:
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    except sqlite3.Error as exc:   # retried next round; the WAL only grows
                        log.warning("WAL checkpoint failed: %s", exc)
                if stopping and request is None:
                    return
        finally:
            conn.close()

    def _wal_bytes(self) -> int:
        try:
            return self._wal_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _publish(self, upto: int, arrays: dict[str, np.ndarray]) -> None:
        try:
            write(self._data_dir, arrays, upto, keep=self._keep)
            self.last_upto = upto
            log.info("checkpoint at journal record %d written", upto)
        except OSError as exc:
            # The journal still holds everything; a failed checkpoint only makes the next
            # recovery replay more.
            log.error("checkpoint at journal record %d failed: %s", upto, exc)
        finally:
            self.busy = False
