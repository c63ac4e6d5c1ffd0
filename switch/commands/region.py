"""``onecard region split --data-dir SRC --owns 31,32 --to DST``: the part of a data set one
regional switch owns (``split.py`` says what it holds). Progress goes to stderr, the summary to
stdout; a request that cannot be met is one line on stderr (``onecard: ...``) and exit
status 2, with nothing written.

``onecard region route --nats URLS --set 31,33=east --set 32=js``: publish the next version of
the routing table (``routing.py``; the provinces not named keep their owner), and
``onecard region table --nats URLS`` prints the current one."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onecard.switch.config import Config
from onecard.switch.errors import NoDataSet

AddCommon = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
Lock = Callable[[Path], Any]


def add_arguments(sub: argparse._SubParsersAction, common: AddCommon) -> None:
    """Add ``region`` and its ``split`` subcommand to the onecard parser (the caller sets
    ``func``: it owns the configuration and the data directory lock)."""
    region = sub.add_parser("region", help="regional switches: cut a data set by province")
    commands = region.add_subparsers(dest="region_command", required=True)
    split = common(commands.add_parser(
        "split", help="write the part of a data set (--data-dir) whose cards' issuing "
        "provinces are --owns into a new directory (--to)"))
    split.add_argument("--owns", required=True, metavar="CODES",
                       help="issuing province codes, comma-separated, e.g. 31,32,33,34")
    split.add_argument("--to", required=True, type=Path, metavar="DST",
                       help="the part's data directory (new, or empty); its key-encryption "
                       "key is the source's, copied to DST.kek when the source's is SRC.kek")
    split.add_argument("--kek-file", help="the source's key-encryption key file (default: "
                       "[security] kek_file, else SRC.kek; $ONECARD_KEK wins over both)")
    route = commands.add_parser("route", help="publish the next routing table version: which "
                                "region decides each issuing province")
    route.add_argument("--set", action="append", required=True, metavar="CODES=REGION",
                       help="provinces (comma-separated codes) owned by REGION; repeatable")
    table = commands.add_parser("table", help="print the routing table in use")
    for p in (route, table):
        p.add_argument("--nats", required=True, metavar="URLS",
                       help="NATS servers, comma-separated (nats://127.0.0.1:4222,...)")
    route.add_argument("--replicas", type=int, choices=(1, 3), default=None,
                       help="replicas of the routing bucket if it does not exist yet "
                       "(default: 3 with three or more servers listed, else 1)")


def parse_owns(text: str) -> list[int]:
    """'31,32' -> [31, 32]; SplitError for anything else."""
    from onecard.switch.commands.split import SplitError

    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise SplitError(f"--owns {text!r}: give province codes separated by commas, e.g. "
                         "31,32")
    return [int(p) for p in parts]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace, config_of: Callable[[argparse.Namespace], Config],
        lock: Lock) -> int:
    """``region split`` reads the configuration (data directory, keys); ``route`` and
    ``table`` only talk to NATS."""
    if args.region_command in ("route", "table"):
        from onecard.switch.commands import route as route_cli

        return route_cli.run(args)
    return run_split(args, config_of(args), lock)


def run_split(args: argparse.Namespace, config: Config, lock: Lock) -> int:
    """Split the data set under the source's lock (no switch may serve it meanwhile). A
    split that cannot be made raises SplitError: one line from ``cli.main``, exit status 2."""
    from onecard.switch.commands.split import split_data_set
    from onecard.switch.store import sqlite

    src = Path(config.data_dir)
    owns = parse_owns(args.owns)
    if not sqlite.db_path(src).exists():        # the lock would create the directory
        raise NoDataSet(f"no data set in {src} ({sqlite.DB_NAME} not found)")
    held = lock(src)
    try:
        summary = split_data_set(src, args.to, owns,
                                 kek_file=args.kek_file or config.security.kek_file or None,
                                 ring_size=config.core.ring_size, progress=_stderr)
    finally:
        held.close()
    print(f"onecard region split: provinces {','.join(map(str, summary.owns))} -> {args.to}: "
          f"{summary.cards:,} cards, {summary.accounts:,} accounts, {summary.terminals:,} "
          f"terminals ({summary.sessions:,} sessions), balance {summary.balance_fen:,} fen, "
          f"{summary.deny_entries:,} deny-list changes; key-encryption key: {summary.kek}")
    return 0
