"""The ``onecard`` command: serve, demo-data, load, terminals, operators, disburse, card, db,
cluster, region, clearing, backup, restore, version.

Every command runs with umask 077: whatever the data set gets (database, WAL, checkpoints,
tokens, lock, key file) is 0600 in 0700 directories, whatever the caller's umask."""

from __future__ import annotations

import argparse
import sys

from onecard.protocols.enums import TERMINAL_KIND
from onecard.switch import __version__
from onecard.switch.commands import backup, common, demo_data, serve, terminals
from onecard.switch.config import tokens_path
from onecard.switch.errors import EXIT_USAGE, OnecardError
from onecard.switch.security import modes


def cmd_load(args) -> int:
    from onecard.bench import loadgen

    return loadgen.main(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onecard", description="Social security card transaction "
                                "switch (社会保障卡居民服务一卡通).")
    p.add_argument("--version", action="version", version=f"onecard {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def options(sp, *, server: bool = False):
        sp.add_argument("--config", help="TOML configuration file, every key optional "
                        "(default: ./onecard.toml if it exists)")
        sp.add_argument("--data-dir", help="data directory (default: ./onecard-data)")
        if server:
            sp.add_argument("--host", help="address the terminal listeners bind "
                            "(server.terminal_host)")
            sp.add_argument("--admin-host", help="address the admin and metrics port binds "
                            "(admin.host)")
            sp.add_argument("--iso8583-port", type=int)
            sp.add_argument("--native-port", type=int)
            sp.add_argument("--http-port", type=int)
        return sp

    s = options(sub.add_parser("serve", help="run the switch (creates demo data on first run)"),
                server=True)
    s.add_argument("--cards", type=int, help="cards in a newly generated demo data set")
    s.set_defaults(func=serve.run)
    d = options(sub.add_parser("demo-data", help="generate the demo data set"))
    d.add_argument("--cards", type=int)
    d.add_argument("--seed", type=int)
    d.add_argument("--force", action="store_true", help="replace an existing data set")
    d.set_defaults(func=demo_data.run)
    t = options(sub.add_parser("terminals", help="list terminals with their master keys' "
                              "check values"))
    t.add_argument("--kind", choices=tuple(TERMINAL_KIND.value_of))
    t.add_argument("--limit", type=int, default=50)
    t.add_argument("--reveal-keys", action="store_true",
                   help="print the master keys themselves (in clear: keep the output secret)")
    t.set_defaults(func=terminals.run)
    from onecard.switch.commands import operators as operators_cli

    operators_cli.add_arguments(sub, options, lambda a: tokens_path(common.config(a)))
    from onecard.switch.commands import keys as keys_cli

    keys_cli.add_arguments(sub, options)
    sub.choices["keys"].set_defaults(func=lambda a: keys_cli.run(a, common.config(a), common.lock))
    from onecard.bench import loadgen
    from onecard.switch.commands import admin as admin_cli

    admin_cli.add_arguments(sub, options)
    from onecard.switch.commands import db as db_cli

    db_cli.add_arguments(sub, common.config)
    for name in ("disburse", "card"):
        sub.choices[name].set_defaults(func=lambda a: admin_cli.run(a, common.config(a)))
    from onecard.switch.commands import cluster as cluster_cli

    cluster_cli.add_arguments(sub)
    from onecard.switch.commands import region as region_cli

    region_cli.add_arguments(sub, options)
    sub.choices["region"].set_defaults(func=lambda a: region_cli.run(a, common.config, common.lock))
    from onecard.switch.commands import clearing as clearing_cli

    clearing_cli.add_arguments(sub, options)
    sub.choices["clearing"].set_defaults(func=lambda a: clearing_cli.run(a, common.config(a)))
    backup.add_arguments(sub, options)
    ld = sub.add_parser("load", help="drive a running switch with signed-on terminals")
    loadgen.add_arguments(ld)
    ld.set_defaults(func=cmd_load)
    v = sub.add_parser("version", help="print the version")
    v.set_defaults(func=lambda _: print(f"onecard {__version__}") or 0)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a command; an OnecardError it raises is one line on stderr and its exit status
    (switch/errors.py), anything else a traceback: a bug."""
    modes.private_umask()
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except OnecardError as exc:
        # "onecard: ", not the command's name: scripts and tests read these lines as they
        # have always been (a command that names itself catches its errors itself).
        print(f"onecard: {exc}", file=sys.stderr)
        return exc.exit_status
    except FileNotFoundError as exc:
        # Not a bug either: a file the operator named (a CSV, a data directory's file) that
        # is not there. A missing data set is NoDataSet, an OnecardError, above.
        print(f"onecard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
