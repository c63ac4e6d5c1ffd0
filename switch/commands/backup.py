"""``onecard backup`` and ``onecard restore``: an online copy of the embedded store, and a
copy put back into a data directory (``store/backup.py`` does the copying)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from onecard.switch.commands import common
from onecard.switch.config import Config, tokens_path
from onecard.switch.store import backend


def _embedded_only(config: Config, command: str) -> bool:
    try:
        backend.open_store(config).only_embedded(
            command, "back it up with pg_basebackup and WAL archiving (docs/operations.md). "
            "This command copies the embedded store.")
    except backend.NotEmbedded as exc:
        print(exc, file=sys.stderr)
        return False
    return True


def _backup_step(what: str, call):
    """``call()`` and 0; or None and the exit status with the reason on stderr: 2 refused
    (backup.Refused), 1 failed."""
    from onecard.switch.store import backup

    try:
        return call(), 0
    except backup.Refused as exc:
        print(f"onecard {what}: {exc}", file=sys.stderr)
        return None, exc.exit_status
    except (backup.BackupError, OSError, sqlite3.Error) as exc:
        print(f"onecard {what}: failed: {exc}", file=sys.stderr)
        return None, 1


def run_backup(args) -> int:
    """An online copy of the embedded store (a switch may be serving from it)."""
    from onecard.switch.store import backup

    config = common.config(args)
    if not _embedded_only(config, "backup"):
        return 2
    data_dir = Path(config.data_dir)
    manifest, status = _backup_step("backup", lambda: backup.backup(
        data_dir, args.to, kek_file=config.security.kek_file or None))
    if status:
        return status
    files = manifest["files"]
    for rel, entry in sorted(files.items()):
        print(f"onecard backup: {rel}  {entry['bytes']:,} bytes  mode {entry['mode']}")
    total = sum(entry["bytes"] for entry in files.values())
    print(f"onecard backup: {len(files)} files, {total / 2**20:.1f} MiB in {args.to}: journal "
          f"end {manifest['journal_end']:,}, checkpoint upto {manifest['checkpoint_upto']:,}")
    tokens = tokens_path(config).resolve()
    if data_dir.resolve() not in tokens.parents:
        print(f"onecard backup: the operators file {tokens} is outside the data directory: "
              "not in this backup")
    print("onecard backup: manifest authenticated (HMAC-SHA256 under a key derived from the "
          "key-encryption key); the key-encryption key is not in a backup: keep it separately")
    return 0


def run_restore(args) -> int:
    """A backup into a data directory (refused over one a switch runs on), then loaded."""
    from onecard.switch.store import backup

    config = common.config(args)
    if not _embedded_only(config, "restore"):
        return 2
    kek_file = args.kek_file or config.security.kek_file or None
    done, status = _backup_step("restore", lambda: backup.restore(
        args.source, config.data_dir, lock=common.lock, force=args.force, kek_file=kek_file,
        unauthenticated=args.unauthenticated, ring_size=config.core.ring_size,
        map_entries_max=config.core.map_entries_max))
    if status:
        return status
    manifest, loaded = done
    print(f"onecard restore: {config.data_dir} restored from {args.source} (taken "
          f"{manifest['created']} from {manifest['source']}): {loaded.next_record_no:,} journal "
          f"records, {loaded.replayed:,} replayed after checkpoint {loaded.snapshot_upto:,}, "
          f"{len(loaded.state.cards):,} cards, loaded in {loaded.seconds:.2f} s")
    return 0


def add_arguments(sub, options) -> None:
    b = options(sub.add_parser("backup", help="online copy of the embedded store (the switch "
                              "may be running) with an authenticated checksum manifest; no "
                              "key"))
    b.add_argument("--to", required=True, metavar="DIR",
                   help="new or empty directory for the backup")
    b.set_defaults(func=run_backup)
    r = options(sub.add_parser("restore", help="restore a backup into a data directory "
                              "and load it"))
    r.add_argument("--from", dest="source", required=True, metavar="DIR",
                   help="a directory onecard backup wrote")
    r.add_argument("--force", action="store_true", help="replace a data directory that is "
                   "not empty (never one a switch runs on)")
    r.add_argument("--kek-file", help="the data set's key-encryption key (default: "
                   "[security] kek_file, else DATA_DIR.kek beside the data directory)")
    r.add_argument("--unauthenticated", action="store_true", help="restore a backup whose "
                   "manifest has no HMAC (made before backups were authenticated): its files "
                   "are checked against its SHA-256s only")
    r.set_defaults(func=run_restore)
