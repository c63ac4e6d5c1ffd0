"""``onecard keys rotate-kek --new-kek-file F`` and ``onecard keys rotate-dek``: the
key-encryption key, or the data key, rotated (docs/operations.md "Rotate keys", "Rotating the
data key"). Both with the switch stopped: on the embedded store the command takes the data
directory's lock; on PostgreSQL ``rotate-dek`` refuses while other onecard connections are
open to the store (and fences any switch that starts meanwhile)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from onecard.switch.errors import DataDirBusy
from onecard.switch.security import keystore
from onecard.switch.store import backend, sqlite


def add_arguments(sub, common) -> None:
    p = sub.add_parser("keys", help="the data set's key-encryption key and data key")
    ks = p.add_subparsers(dest="keys_command", required=True)
    r = common(ks.add_parser("rotate-kek", help="wrap the data key under a new key-encryption "
                             "key (the switch stopped)"))
    r.add_argument("--new-kek-file", required=True,
                   help="where the new key goes (created 0600 if missing; an existing one "
                        "must hold 64 hex digits)")
    common(ks.add_parser("rotate-dek", help="a new data key, everything sealed at rest sealed "
                         "again under it (the switch stopped)"))


def run(args: argparse.Namespace, config, lock) -> int:
    if args.keys_command == "rotate-dek":
        return _rotate_dek(config, lock)
    return _rotate_kek(args, config, lock)


def _rotate_dek(config, lock) -> int:
    from onecard.switch.store import rotate_dek

    store = backend.open_store(config)
    try:
        handle = store.offline_lock(lock)
    except (OSError, DataDirBusy) as exc:
        print(f"onecard keys: {exc}", file=sys.stderr)
        return 2
    try:
        done = store.rotate_dek(config.security.kek_file or None)
    except (keystore.KekError, FileNotFoundError) as exc:
        print(f"onecard keys: {exc}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as exc:     # a full disk: the transaction rolled back
        print(f"onecard keys: data key not rotated: {exc}", file=sys.stderr)
        return 1
    finally:
        if handle is not None:
            handle.close()
    print(rotate_dek.describe(done, store.where()))
    return 0


def _rotate_kek(args: argparse.Namespace, config, lock) -> int:

    data_dir = Path(config.data_dir)
    try:
        backend.open_store(config).only_embedded(
            "keys", "rotate-kek works on the embedded store (its meta table); on PostgreSQL "
            "the data key is wrapped in the store's meta table the same way: not yet automated")
    except backend.NotEmbedded as exc:
        print(exc, file=sys.stderr)
        return 2
    new_path = Path(args.new_kek_file)
    try:
        new_kek = _new_kek(new_path)
        handle = lock(data_dir)
    except (keystore.KekError, OSError, ValueError, DataDirBusy) as exc:
        print(f"onecard keys: {exc}", file=sys.stderr)
        return 2
    try:
        conn = sqlite.connect(sqlite.db_path(data_dir))
        try:
            keystore.rewrap(conn, data_dir, new_kek, str(new_path),
                            config.security.kek_file or None)
        finally:
            conn.close()
    except keystore.KekError as exc:
        print(f"onecard keys: {exc}", file=sys.stderr)
        return 2
    finally:
        handle.close()
    current = keystore.kek_path(data_dir, config.security.kek_file or None)
    print(f"onecard keys: the data key of {data_dir} is now wrapped under {new_path}: move it "
          f"over {current} (or set [security] kek_file = \"{new_path}\") before the next "
          "start, and keep the old key as long as backups made before now are kept: they "
          "open only with it")
    return 0


def _new_kek(path: Path) -> bytes:
    if path.exists():
        return keystore.parse_kek(path.read_text(), str(path))
    return keystore.write_kek(path)
