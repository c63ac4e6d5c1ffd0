"""``onecard operators list|add|rotate|revoke``: manage the tokens file.

Works on the file directly (the switch need not run, and a running one picks the change up
at its next admin request). A new token is printed once, on stdout; only its hash is stored.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from onecard.switch.admin import operators
from onecard.switch.admin.operators import ROLES, Operator, TokensFile
from onecard.switch.security import tokens

TokensPath = Callable[[argparse.Namespace], Path]


def add_arguments(sub, common, tokens_path: TokensPath) -> None:
    p = sub.add_parser("operators", help="list, add, rotate or revoke admin API operators")
    ops = p.add_subparsers(dest="action", required=True)
    common(ops.add_parser("list", help="operators, their roles and whether revoked"))
    add = common(ops.add_parser("add", help="a new operator; prints its token once"))
    add.add_argument("name")
    add.add_argument("--roles", required=True, help=f"comma-separated, of {', '.join(ROLES)}")
    rotate = common(ops.add_parser("rotate", help="a new token for an operator (the old one "
                                   "stops working); prints it once"))
    rotate.add_argument("name")
    revoke = common(ops.add_parser("revoke", help="the operator's token stops working"))
    revoke.add_argument("name")
    p.set_defaults(func=lambda args: run(args, tokens_path(args)))


def run(args: argparse.Namespace, path: Path) -> int:
    try:
        return _ACTIONS[args.action](args, path)
    except ValueError as exc:
        print(f"onecard operators: {exc}", file=sys.stderr)
        return 1


def _list(args: argparse.Namespace, path: Path) -> int:
    data = operators.read(path) if path.exists() else TokensFile([])
    print(f"{'operator':24}  {'roles':32}  state")
    for op in data.operator:
        print(f"{op.name:24}  {','.join(op.roles):32}  {'revoked' if op.revoked else 'active'}")
    return 0


def _find(data: TokensFile, name: str) -> Operator:
    for op in data.operator:
        if op.name == name:
            return op
    raise ValueError(f"no operator {name!r}")


def _issue(path: Path, data: TokensFile, op: Operator) -> int:
    token = tokens.new_token()
    op.token_sha256, op.revoked = tokens.hash_token(token), False
    operators.write(path, data)
    print(f"operator {op.name} ({','.join(op.roles)}) token: {token}")
    print("(shown once: only its hash is stored)", file=sys.stderr)
    return 0


def _add(args: argparse.Namespace, path: Path) -> int:
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    if not roles or set(roles) - set(ROLES):
        raise ValueError(f"--roles: one or more of {', '.join(ROLES)}")
    data = operators.read(path) if path.exists() else TokensFile([])
    if any(op.name == args.name for op in data.operator):
        raise ValueError(f"operator {args.name!r} exists (rotate gives it a new token)")
    op = Operator(args.name, roles)
    data.operator.append(op)
    return _issue(path, data, op)


def _rotate(args: argparse.Namespace, path: Path) -> int:
    data = operators.read(path)
    return _issue(path, data, _find(data, args.name))


def _revoke(args: argparse.Namespace, path: Path) -> int:
    data = operators.read(path)
    op = _find(data, args.name)
    # The entry stays: its position is the operator's number in journal records.
    op.token_sha256, op.revoked = "", True
    operators.write(path, data)
    print(f"operator {op.name} revoked")
    return 0


_ACTIONS = {"list": _list, "add": _add, "rotate": _rotate, "revoke": _revoke}
