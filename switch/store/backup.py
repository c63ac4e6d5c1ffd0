"""Online backup and restore of the embedded store (issue 17): ``onecard backup`` and
``onecard restore``.

A backup is a directory holding what a data directory needs to start: the newest checkpoint,
the database (taken with SQLite's online backup API while the switch commits), and the other
files of the data directory (``holders.bin``, ``admin-tokens.toml``, clearing files), plus
``backup-manifest.json`` naming each file with its SHA-256, size and mode. It is consistent
when the checkpoint is not newer than the copied journal: the checkpoint holds every record
below its ``upto`` applied, and recovery replays the journal from there. So the checkpoint is
copied first (the switch publishes one only once the records below its ``upto`` are durable)
and the database after it, in one read transaction: the copy is the journal as of one
commit, at or after that ``upto``. The key-encryption key is never in a backup (it lives
beside the data directory, not in it): a backup alone opens nothing.

The manifest is authenticated (issue 28): it carries an HMAC-SHA256 of its other fields
under a key derived from the key-encryption key (``keystore.backup_mac_key``). The SHA-256s
alone tell a damaged file, not a changed one: whoever can write to where backups are kept can
change a file and its checksum together. With the HMAC, changing either needs the key.

Restore checks the manifest's HMAC first, before it copies or opens anything (a manifest
without one is refused unless asked for, ``unauthenticated``: backups made before the HMAC
have none), then verifies every file against the manifest while copying it into a staging
directory beside the target, checks that the key-encryption key opens the data set, then
moves the files into the target (under the data directory's lock, so never under a running
switch) and loads it: checkpoint plus replay, as a start does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from onecard.switch import __version__
from onecard.switch.errors import EXIT_FAILED, EXIT_USAGE, DataSetError
from onecard.switch.security import first_tokens, keystore, modes
from onecard.switch.store import loader, snapshots, sqlite, staged

FORMAT = 1
MANIFEST = "backup-manifest.json"
HMAC_FIELD = "hmac_sha256"        # of the manifest's other fields, canonical JSON
LOCK_FILE = "onecard.lock"
# Not copied: the database and its SQLite side files (the online backup copies the
# database), the lock, and the checkpoints (the newest one is copied on its own).
NOT_COPIED = {sqlite.DB_NAME, *(sqlite.DB_NAME + s for s in ("-wal", "-shm", "-journal")),
              LOCK_FILE, snapshots.snapshot_root(".").name,
              first_tokens.FILE_NAME}     # operator tokens in clear: never in a backup
STEP_PAGES = 4096                 # 16 MiB of 4 KiB pages per backup step
CHECKPOINT_TRIES = 5
PROGRESS_EVERY_S = 1.0
COPY_CHUNK = 1 << 20
BIG_FILE_BYTES = 64 << 20         # restore names each file this big as it copies it

Progress = Callable[[str], None]


class BackupError(DataSetError):
    """A backup or restore that failed; the message is one line for the operator."""

    exit_status = EXIT_FAILED


class Refused(BackupError):
    """Refused as asked (a non-empty target, no --force): a usage error."""

    exit_status = EXIT_USAGE


class Unauthentic(Refused):
    """A backup that is not what its key-holder wrote (a changed file or manifest, an HMAC
    removed or made under another key): refused before anything is restored."""


def manifest_hmac(manifest: dict, key: bytes) -> str:
    """The HMAC-SHA256 of every manifest field but the HMAC itself, over canonical JSON
    (sorted keys, no spaces: the same bytes after a JSON round trip)."""
    fields = {k: v for k, v in manifest.items() if k != HMAC_FIELD}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _source_mac_key(data_dir: Path, kek_file: str | None) -> bytes:
    """The manifest key of the data set in data_dir: from its KEK, checked to be the one its
    data key is wrapped under (a backup signed under another key would never restore)."""
    conn = sqlite.connect(sqlite.db_path(data_dir), readonly=True)
    try:
        kek, _where = keystore.checked_kek(conn, data_dir, kek_file)
    finally:
        conn.close()
    return keystore.backup_mac_key(kek)


def stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _entries(path: Path) -> list[str]:
    """What a directory holds besides its lock file (which a switch or a restore made)."""
    if not path.exists():
        return []
    if not path.is_dir():
        raise Refused(f"{path} is not a directory")
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE)


def _copy_file(src: Path, dst: Path, mode: int) -> dict:
    """Copy a file (created exclusively, with the given mode), fsync it; its manifest entry
    (SHA-256 of the bytes written)."""
    digest, size = hashlib.sha256(), 0
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, modes.FILE_MODE)
    with open(src, "rb") as f, os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        while chunk := f.read(COPY_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return {"sha256": digest.hexdigest(), "bytes": size, "mode": f"{mode:04o}"}


def _sha256(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            digest.update(chunk)
    st = path.stat()
    return {"sha256": digest.hexdigest(), "bytes": st.st_size,
            "mode": f"{st.st_mode & 0o777:04o}"}


def _copy_checkpoint(data_dir: Path, to: Path, out: Progress) -> tuple[int, dict]:
    """Copy the newest complete checkpoint; (its upto, manifest entries). The switch may
    publish a newer one meanwhile and prune this one: a file gone before it was opened makes
    the copy start over, and so does a newer checkpoint (a shorter replay), a few times."""
    root = snapshots.snapshot_root(data_dir)
    for attempt in range(1, CHECKPOINT_TRIES + 1):
        found = snapshots.newest(data_dir)
        if found is None:
            raise BackupError(f"no checkpoint under {root}: not a data set")
        upto, path, _names = found
        rel = Path(root.name, path.name)
        dst = modes.private_dir(to / rel)
        out(f"onecard backup: copying checkpoint {path.name} (journal records below {upto:,})")
        try:
            # A checkpoint directory is renamed into place complete: what it lists is whole.
            files = {(rel / p.name).as_posix(): _copy_file(p, dst / p.name, modes.FILE_MODE)
                     for p in sorted(path.iterdir())}
        except FileNotFoundError:
            shutil.rmtree(dst)
            continue                    # pruned while copying: take the newer one
        again = snapshots.newest(data_dir)
        if again is not None and again[0] != upto and attempt < CHECKPOINT_TRIES:
            out(f"onecard backup: checkpoint {upto} superseded by {again[0]} while copying; "
                "again")
            shutil.rmtree(dst)
            continue
        return upto, files
    raise BackupError(f"checkpoints under {root} kept changing while being copied "
                      f"({CHECKPOINT_TRIES} tries)")


def _copy_database(data_dir: Path, to: Path, out: Progress) -> tuple[int, dict]:
    """The database by SQLite's online backup, in steps, all read in one transaction (one
    snapshot: the journal as of one commit; a writer in another process never restarts it);
    (journal end of the copy, manifest entry). The copy is a rollback-journal file: one
    self-contained file (the store sets WAL again when it opens it)."""
    src_path, dst_path = sqlite.db_path(data_dir), sqlite.db_path(to)
    if not src_path.exists():
        raise BackupError(f"no database at {src_path}: not a data set")
    src = sqlite3.connect(f"{src_path.resolve().as_uri()}?mode=ro", uri=True,
                          isolation_level=None)
    dst = sqlite3.connect(dst_path, isolation_level=None)
    sqlite.private_db_files(dst_path)
    last = [time.monotonic()]

    def progress(_status: int, remaining: int, total: int) -> None:
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S:
            last[0] = time.monotonic()
            out(f"onecard backup: database {total - remaining:,}/{total:,} pages "
                f"({100 * (total - remaining) // max(total, 1)}%)")

    try:
        src.execute("BEGIN")
        end = sqlite.journal_end(src)           # starts the read transaction: the snapshot
        out(f"onecard backup: copying the database as of journal record {end:,}")
        src.backup(dst, pages=STEP_PAGES, progress=progress)
        src.execute("COMMIT")
        copied_end = sqlite.journal_end(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        src.close()
        dst.close()
    if copied_end != end:
        raise BackupError(f"the copied journal ends at {copied_end}, the snapshot at {end}")
    snapshots.fsync_path(dst_path)
    return end, _sha256(dst_path)


def _copy_others(data_dir: Path, to: Path, out: Progress) -> dict:
    """Every other regular file of the data directory, modes kept. Dot files (a start's
    write probe, temporaries) are left out; so are symbolic links and the like, named."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(data_dir):
        here = Path(dirpath)
        rel_dir = here.relative_to(data_dir)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in NOT_COPIED]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            src, rel = here / name, rel_dir / name
            if (rel_dir == Path(".") and name in NOT_COPIED) or name.startswith("."):
                continue
            if src.is_symlink() or not src.is_file():
                out(f"onecard backup: {rel} left out (not a regular file)")
                continue
            modes.private_dir(to / rel_dir)
            files[rel.as_posix()] = _copy_file(src, to / rel, src.stat().st_mode & 0o777)
    return files


def _fsync_dirs(root: Path) -> None:
    for dirpath, _dirnames, _files in os.walk(root, topdown=False):
        snapshots.fsync_path(Path(dirpath))


def _nested(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def backup(data_dir: str | Path, to: str | Path, *, kek_file: str | None = None,
           out: Progress = stderr) -> dict:
    """Copy the data set in data_dir (a switch may be serving from it) into the new or empty
    directory ``to``; the manifest written, authenticated under the data set's KEK (found as
    a start finds it; ``kek_file`` is ``[security] kek_file``). Refused if ``to`` holds
    anything."""
    data_dir, to = Path(data_dir), Path(to)
    if _nested(data_dir, to):
        raise Refused(f"backup target {to} and data directory {data_dir} must not contain "
                      "one another")
    if _entries(to):
        raise Refused(f"backup target {to} is not empty")
    if not sqlite.db_path(data_dir).exists():
        raise BackupError(f"no data set in {data_dir} ({sqlite.DB_NAME} not found)")
    mac_key = _source_mac_key(data_dir, kek_file)      # before anything is written
    # A data-key rotation stopped after its commit: its files (under the key the database
    # names) put in place first, or the copy would pair them with the wrong key.
    staged.finish_pending(data_dir)
    modes.private_dir(to)
    try:
        upto, files = _copy_checkpoint(data_dir, to, out)
        end, files[sqlite.DB_NAME] = _copy_database(data_dir, to, out)
        if end < upto:
            raise BackupError(f"the copied journal ends at record {end}, before the copied "
                              f"checkpoint's {upto}: the data set is damaged")
        files.update(_copy_others(data_dir, to, out))
        manifest = {"format": FORMAT, "created": dt.datetime.now(dt.UTC).isoformat(),
                    "onecard": __version__, "source": str(data_dir.resolve()),
                    "journal_end": end, "checkpoint_upto": upto, "files": files}
        manifest[HMAC_FIELD] = manifest_hmac(manifest, mac_key)
        with modes.open_private(to / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dirs(to)
    except BaseException:
        # Everything in `to` is this backup's (it was empty): leave no half backup.
        for p in to.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        raise
    return manifest


def read_manifest(src: Path) -> dict:
    path = src / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupError(f"{src} is not a backup ({MANIFEST} not found)") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: backup format {manifest.get('format')!r} is not "
                          f"{FORMAT}, the one this build reads")
    return manifest


def _stage(src: Path, staging: Path, manifest: dict, out: Progress) -> None:
    """Copy the backup's files into staging, each checked against the manifest."""
    for rel, want in sorted(manifest["files"].items()):
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise BackupError(f"{src / MANIFEST} names a file outside the backup: {rel}")
        source = src / rel
        if not source.is_file():
            raise Unauthentic(f"backup file {source} is missing")
        modes.private_dir((staging / rel).parent)
        if want["bytes"] >= BIG_FILE_BYTES:
            out(f"onecard restore: checking and copying {rel} ({want['bytes'] / 2**20:,.0f} MiB)")
        got = _copy_file(source, staging / rel, int(want["mode"], 8) & 0o777)
        if got["sha256"] != want["sha256"] or got["bytes"] != want["bytes"]:
            # The manifest is authenticated: the file was damaged or changed since.
            raise Unauthentic(f"backup file {source} is damaged or changed: its SHA-256 is "
                              "not the one the manifest recorded; nothing restored")


def authenticate(src: Path, manifest: dict, data_dir: Path, kek_file: str | None, *,
                 unauthenticated: bool = False, out: Progress = stderr) -> None:
    """Check the manifest's HMAC under the KEK restore uses (found for ``data_dir`` as a start
    finds it); Unauthentic in one line when it fails or, unless ``unauthenticated``, when the
    manifest has none."""
    if HMAC_FIELD not in manifest:
        if not unauthenticated:
            raise Unauthentic(f"backup {src} is not authenticated (its manifest has no HMAC: "
                              "made before onecard authenticated backups, or the HMAC was "
                              "removed); nothing restored (--unauthenticated restores it "
                              "checked against its SHA-256s only)")
        out(f"onecard restore: {src} has no HMAC; restoring it unauthenticated, as asked "
            "(its files are checked against the manifest's SHA-256s only)")
        return
    try:
        kek, where = keystore.load_kek(data_dir, kek_file)
    except keystore.KekError as exc:
        raise keystore.KekError(f"{exc}; a backup never holds the key-encryption key: put "
                                "the data set's key where restore looks for it") from None
    want = manifest_hmac(manifest, keystore.backup_mac_key(kek))
    if not hmac.compare_digest(want, str(manifest[HMAC_FIELD])):
        raise Unauthentic(f"backup {src} fails authentication (its manifest's HMAC): the "
                          "manifest was changed, or the key-encryption key from "
                          f"{where} is not the one of the data set it was taken from; "
                          "nothing restored")


def _check_kek(staging: Path, data_dir: Path, kek_file: str | None) -> None:
    """The key-encryption key must open the backed-up data set (it is never in a backup)."""
    conn = sqlite.connect(sqlite.db_path(staging), readonly=True)
    try:
        keystore.open_data_set(conn, data_dir, kek_file)
    except keystore.KekError as exc:
        raise keystore.KekError(f"{exc}; a backup never holds the key-encryption key: put "
                                "the data set's key where restore looks for it") from None
    finally:
        conn.close()


def _move_into(staging: Path, data_dir: Path, force: bool) -> None:
    """Replace the data directory's contents (its lock file stays: we hold it)."""
    if force:
        for name in _entries(data_dir):
            p = data_dir / name
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for p in sorted(staging.iterdir()):
        os.rename(p, data_dir / p.name)
    snapshots.fsync_path(data_dir)


def restore(src: str | Path, data_dir: str | Path, *, lock: Callable, force: bool = False,
            kek_file: str | None = None, unauthenticated: bool = False,
            out: Progress = stderr, **load_options) -> tuple[dict, loader.Loaded]:
    """Restore the backup in src into data_dir; the manifest and the data set loaded from
    it. ``lock(data_dir)`` takes the data directory's lock (refusing one a switch serves
    from) and returns a handle to close. ``unauthenticated`` accepts a manifest without an
    HMAC (a backup made before they had one)."""
    src, data_dir = Path(src), Path(data_dir)
    if _nested(src, data_dir):
        raise Refused(f"backup {src} and data directory {data_dir} must not contain one "
                      "another")
    manifest = read_manifest(src)
    # First: nothing of a backup is copied or opened before its manifest is authentic.
    authenticate(src, manifest, data_dir, kek_file, unauthenticated=unauthenticated, out=out)
    if _entries(data_dir) and not force:
        raise Refused(f"data directory {data_dir} is not empty (--force replaces it)")
    created = not data_dir.exists()
    handle = lock(data_dir)
    staging = data_dir.parent / f".{data_dir.name}.restoring-{os.getpid()}"
    moved = False
    try:
        shutil.rmtree(staging, ignore_errors=True)
        modes.private_dir(staging)
        out(f"onecard restore: checking and copying {len(manifest['files'])} files from {src}")
        _stage(src, staging, manifest, out)
        _check_kek(staging, data_dir, kek_file)
        _move_into(staging, data_dir, force)
        moved = True
        out(f"onecard restore: loading {data_dir} (checkpoint {manifest['checkpoint_upto']}, "
            f"journal end {manifest['journal_end']})")
        loaded = loader.load(data_dir, kek_file=kek_file, **load_options)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        handle.close()
        if created and not moved:           # refused before anything was restored: as before
            shutil.rmtree(data_dir, ignore_errors=True)
    if loaded.next_record_no != manifest["journal_end"]:
        raise BackupError(f"restored data set loads to record {loaded.next_record_no}, the "
                          f"backup's journal ends at {manifest['journal_end']}")
    return manifest, loaded
