"""``onecard db migrate|import|status``: the PostgreSQL store's commands.

The DSN is ``--dsn`` or, without it, ``[store] dsn`` of the configuration. Every failure is one
line on stderr and exit code 2 (unreachable server, wrong password, a refused import, a check
that did not match), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from onecard.switch.config import Config
from onecard.switch.store.pg.connect import PgError, connect, driver_errors, one_line

ConfigOf = Callable[[argparse.Namespace], Config]


def _dsn(args: argparse.Namespace, config: Config) -> str:
    dsn = args.dsn or config.store.dsn
    if not dsn:
        raise PgError("no PostgreSQL DSN: give --dsn or set [store] dsn in the configuration")
    return dsn


def _progress(table: str, done: int, total: int) -> None:
    print(f"onecard db import: {table}: {done:,} / {total:,} rows", file=sys.stderr, flush=True)


def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    from onecard.switch.store.pg.migrate import migrate
    from onecard.switch.store.pg.schema import SCHEMA_VERSION

    with connect(_dsn(args, config)) as pg:
        done = migrate(pg)
    if done:
        print(f"onecard db migrate: schema version {done[-1]} (applied "
              f"{', '.join(map(str, done))})")
    else:
        print(f"onecard db migrate: schema version {SCHEMA_VERSION}, already current")
    return 0


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    from onecard.switch.store.pg.importer import import_data_set

    data_dir = Path(args.data_dir_pos or config.data_dir)
    started = time.perf_counter()
    with connect(_dsn(args, config)) as pg:
        result = import_data_set(data_dir, pg, replace=args.replace, progress=_progress)
    seconds = time.perf_counter() - started
    total = sum(result.rows.values())
    print(f"onecard db import: {data_dir} -> PostgreSQL in {seconds:.1f} s: {total:,} rows"
          f"{' (replaced the data set there)' if result.replaced else ''}; counts equal per "
          f"table; journal to record {result.journal_end:,}, sha256 {result.journal_sha256} "
          "equal on both sides")
    for table, rows in result.rows.items():
        print(f"  {table:18} {rows:>12,}")
    sealed = ", ".join(f"{table}/{name}" for table, name in result.sealed)
    print(f"onecard db import: checkpoint at record {result.checkpoint_upto:,} and sealed "
          f"files copied as they are ({sealed}), sha256 equal on both sides; data stays "
          "encrypted under the same key-encryption key")
    return 0


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    from onecard.switch.store.pg.status import read_status

    with connect(_dsn(args, config)) as pg:
        status = read_status(pg)
    print(f"onecard db status: {status.server}")
    if status.schema_version is None:
        print("  no onecard store here: run onecard db migrate")
        return 0
    print(f"  schema version {status.schema_version}; journal end {status.journal_end:,}; "
          f"lease epoch {status.lease_epoch}; "
          f"{'encrypted at rest' if status.encrypted else 'no data key (empty store)'}")
    for table, rows in status.rows.items():
        print(f"  {table:18} {rows:>12,}")
    return 0


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        return args.db_func(args, config)
    except PgError as exc:
        print(f"onecard db {args.db_command}: {exc}", file=sys.stderr)
        return 2
    except driver_errors() as exc:
        print(f"onecard db {args.db_command}: PostgreSQL: {one_line(exc)}", file=sys.stderr)
        return 2


def add_arguments(sub: argparse._SubParsersAction, config_of: ConfigOf) -> None:
    db = sub.add_parser("db", help="the PostgreSQL store: migrate, import, status")
    commands = db.add_subparsers(dest="db_command", required=True)

    def command(name: str, func, text: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=text)
        p.add_argument("--config", help="TOML configuration file ([store] dsn; default: "
                       "./onecard.toml if it exists)")
        p.add_argument("--dsn", help="libpq connection string (may list several hosts); "
                       "default: [store] dsn")
        p.set_defaults(func=lambda a: run(a, config_of(a)), db_func=func)
        return p

    command("migrate", cmd_migrate, "create or upgrade the store's schema")
    imp = command("import", cmd_import, "copy an embedded (SQLite) data set into PostgreSQL")
    imp.add_argument("data_dir_pos", metavar="DATA_DIR", nargs="?",
                     help="the data set's directory (default: data_dir of the configuration)")
    imp.add_argument("--replace", action="store_true",
                     help="replace a data set already in the target")
    command("status", cmd_status, "schema version, journal end and row counts")
