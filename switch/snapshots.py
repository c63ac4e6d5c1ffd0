"""Checkpoints of the core's mutable arrays, as .npy files in a directory per checkpoint.

A checkpoint taken when the journal's next record number was ``upto`` holds the state with
every record below ``upto`` applied. It is published (renamed into place) only once those
records are durable, so recovery = newest checkpoint + journal records from ``upto`` on.
Files live beside the database rather than in it so that writing hundreds of megabytes never
holds SQLite's write lock against group commits.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
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
    """Publishes checkpoints handed over by the event loop once they are covered by durable
    journal records. One checkpoint in flight at a time; a newer request replaces an older one
    that has not started."""

    def __init__(self, data_dir: Path, wait_durable: Callable[[int, float], bool],
                 keep: int) -> None:
        super().__init__(name="onecard-checkpoint", daemon=True)
        self._data_dir = data_dir
        self._wait_durable = wait_durable
        self._keep = keep
        self._cond = threading.Condition()
        self._request: tuple[int, dict[str, np.ndarray]] | None = None
        self._stopping = False
        self.busy = False
        self.last_upto = -1

    def submit(self, upto: int, arrays: dict[str, np.ndarray]) -> None:
        with self._cond:
            self._request = (upto, arrays)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._request is not None or self._stopping)
                if self._request is None:
                    return
                upto, arrays = self._request
                self._request = None
                self.busy = True
            try:
                while not self._wait_durable(upto, 1.0):
                    if self._stopping:
                        return
                write(self._data_dir, arrays, upto, keep=self._keep)
                self.last_upto = upto
                log.info("checkpoint at journal record %d written", upto)
            except OSError as exc:
                # The journal still holds everything; a failed checkpoint only makes the next
                # recovery replay more.
                log.error("checkpoint at journal record %d failed: %s", upto, exc)
            finally:
                self.busy = False
