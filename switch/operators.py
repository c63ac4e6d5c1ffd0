"""Operator tokens and roles for the admin API.

The tokens file (TOML, mode 0600, in the data directory unless configured elsewhere) lists
operators with a name, their roles and a token; one operator per role is created on first
start. Roles: ``ops`` (read only), ``card`` (card service: loss, unfreeze, replace, electronic
card, bank, filings), ``finance`` (top-ups and disbursements), ``catalogue`` (catalogue
changes).
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import msgspec

ROLES = ("ops", "card", "finance", "catalogue")


class Operator(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    roles: list[str]
    token: str


class TokensFile(msgspec.Struct, forbid_unknown_fields=True):
    operator: list[Operator]


@dataclass(frozen=True)
class Operators:
    operators: tuple[Operator, ...]

    def find(self, token: str) -> Operator | None:
        found = None
        for op in self.operators:      # compare with every token: no timing hint which matched
            if hmac.compare_digest(op.token.encode(), token.encode()):
                found = op
        return found

    def index(self, op: Operator) -> int:
        return self.operators.index(op) + 1      # 0 = the switch itself in journal records


def load_or_create(path: Path) -> Operators:
    if not path.exists():
        ops = [Operator(f"{role}-operator", [role], secrets.token_urlsafe(24)) for role in ROLES]
        text = ("# onecard operator tokens: Authorization: Bearer <token>. Keep this file secret.\n"
                + msgspec.toml.encode(TokensFile(ops)).decode())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    try:
        data = msgspec.toml.decode(path.read_bytes(), type=TokensFile)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    for op in data.operator:
        unknown = set(op.roles) - set(ROLES)
        if unknown:
            raise ValueError(f"{path}: operator {op.name}: unknown roles {sorted(unknown)}")
        if len(op.token) < 16:
            raise ValueError(f"{path}: operator {op.name}: token shorter than 16 characters")
    return Operators(tuple(data.operator))


def token_for(path: Path, role: str) -> str:
    """The token of the first operator holding ``role`` (CLI and tests)."""
    for op in load_or_create(path).operators:
        if role in op.roles:
            return op.token
    raise KeyError(f"no operator with role {role} in {path}")
