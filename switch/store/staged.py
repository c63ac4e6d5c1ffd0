"""Files a data-key rotation sealed under its new key beside the ones they replace
(``NAME.dek<generation>``), and ``finish_pending``, which puts a committed rotation's in place.
Every start (the loader), backup, import and rotation calls it first, so it sits below all of
them; the rotation itself is ``rotate_dek.py``, which says why files are staged."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from onecard.switch.store import snapshots, sqlite

STAGED = re.compile(r"^(?P<name>.+)\.dek(?P<generation>\d+)$")


def staged(path: Path, generation: int) -> Path:
    """Where ``path`` sealed under generation ``generation``'s key waits for its commit."""
    return path.with_name(f"{path.name}.dek{generation}")


def staged_files(data_dir: Path) -> Iterator[tuple[Path, Path, int]]:
    """(staged file, the file it replaces, its generation) in the data directory."""
    root = snapshots.snapshot_root(data_dir)
    dirs = [data_dir, *(sorted(root.glob(f"{snapshots.PREFIX}*")) if root.is_dir() else [])]
    for directory in dirs:
        for path in sorted(directory.glob("*.dek*")):
            m = STAGED.match(path.name)
            if m and path.is_file():
                yield path, path.with_name(m["name"]), int(m["generation"])


def current_generation(data_dir: str | Path) -> int:
    """The generation of the data set's current DEK, from its database (no key needed)."""
    conn = sqlite.connect(sqlite.db_path(data_dir), readonly=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'dek_generation'").fetchone()
    finally:
        conn.close()
    return int(row[0]) if row else 0


def finish_pending(data_dir: str | Path, generation: int | None = None, *,
                   drop_uncommitted: bool = False) -> int:
    """Complete a rotation that committed but was stopped before its files were all in
    place: its staged files (of ``generation``, the data set's current; read from the
    database when None) renamed over the old ones. How many were put in place; idempotent.
    Staged files of another generation are those of a rotation that has not committed:
    running now (a reader without the lock must leave them alone) or killed before its
    commit; only the rotation itself, holding the lock, deletes them
    (``drop_uncommitted``)."""
    data_dir = Path(data_dir)
    if not sqlite.db_path(data_dir).exists():
        return 0
    if generation is None:
        generation = current_generation(data_dir)
    done, dirs = 0, set()
    for path, target, gen in staged_files(data_dir):
        try:
            if gen == generation:
                os.replace(path, target)
                done += 1
            elif drop_uncommitted:
                path.unlink()
            else:
                continue
        except FileNotFoundError:       # another process finishing it at the same time
            continue
        dirs.add(path.parent)
    for directory in dirs:
        snapshots.fsync_path(directory)
    return done
