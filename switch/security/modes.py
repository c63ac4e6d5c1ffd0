"""File modes of the data directory: 0700 for directories, 0600 for files, whatever the umask.

The CLI sets umask 077 at entry, and every place that creates a file or directory in the data
set also chmods it explicitly: a library caller (tests, bench tools) may run with any umask.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

DIR_MODE = 0o700
FILE_MODE = 0o600
UMASK = 0o077


def private_umask() -> int:
    """Set umask 077; the previous one."""
    return os.umask(UMASK)


def private_dir(path: str | Path) -> Path:
    """Create a directory (and missing parents) 0700; an existing one is chmodded to 0700."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: str | Path) -> None:
    """chmod 0600 if the file exists (SQLite's -wal/-shm come and go)."""
    try:
        os.chmod(path, FILE_MODE)
    except FileNotFoundError:
        pass


# How open_private opens for each file mode: a data set's file is only ever replaced whole,
# created exclusively (a key that must not be overwritten), or opened to lock.
_REPLACE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_OPEN_FLAGS = {"w": _REPLACE, "wb": _REPLACE, "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
               "r+": os.O_RDWR | os.O_CREAT}


def open_private(path: str | Path, mode: str = "wb") -> IO:
    """Open a data-set file 0600 whatever the umask: os.open's mode only applies to a new file
    and is masked by the umask, so the descriptor is fchmodded too (an existing file as well)."""
    fd = os.open(path, _OPEN_FLAGS[mode], FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "w" if mode == "x" else mode)


def write_private(path: Path, text: str) -> None:
    """``text`` in ``path``, 0600 from its first byte, replacing any older file whole (a
    reader sees the old file or the new one, never half of one)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open_private(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def private_tree(root: str | Path) -> None:
    """Every directory under root 0700 and every file 0600 (the data directory at start)."""
    root = Path(root)
    os.chmod(root, DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(Path(dirpath, name), DIR_MODE)
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                os.chmod(path, FILE_MODE)
