"""Operator tokens and roles for the admin API.

The tokens file (TOML, mode 0600, in the data directory unless configured elsewhere) lists
operators with a name, their roles and the SHA-256 of their token (``security/tokens.py``);
the token itself is shown once, when it is made, and stored nowhere. One operator per role is
created on first start. Roles: ``ops`` (read only), ``card`` (card service: loss, unfreeze,
replace, electronic card, bank, filings), ``finance`` (top-ups and disbursements),
``catalogue`` (catalogue changes).

``onecard operators add|rotate|revoke`` rewrite the file (atomically); a running switch reads
it again when it changes (``Operators.find`` compares the file's identity, a stat per admin
request), so no restart is needed. An operator's position in the file is its number in journal
records: revoking keeps the entry (``revoked = true``) so later positions never shift.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

import msgspec

from onecard.switch.security import modes, tokens

log = logging.getLogger("onecard.operators")

ROLES = ("ops", "card", "finance", "catalogue")
HEADER = ("# onecard operators: Authorization: Bearer <token>. Only SHA-256 hashes of the tokens "
          "are kept here;\n# manage with: onecard operators list|add|rotate|revoke\n")


class Operator(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: str
    roles: list[str]
    token_sha256: str = ""
    revoked: bool = False
    token: str = ""             # files written before hashing: hashed and removed on load


class TokensFile(msgspec.Struct, forbid_unknown_fields=True):
    operator: list[Operator]


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class Operators:
    """The operators of a tokens file, read again whenever the file changes."""

    def __init__(self, operators: tuple[Operator, ...], path: Path | None = None) -> None:
        self.operators = operators
        self.path = path
        self._stamp = _stamp(path) if path is not None else None

    def _refresh(self) -> None:
        if self.path is None or _stamp(self.path) == self._stamp:
            return
        stamp = _stamp(self.path)
        try:
            self.operators = tuple(read(self.path).operator)
        except (ValueError, OSError) as exc:    # half-edited by hand: keep the last good set
            log.error("tokens file not reloaded, keeping the previous operators: %s", exc)
        else:
            log.info("tokens file %s changed: %d operators", self.path, len(self.operators))
        self._stamp = stamp

    def find(self, token: str) -> Operator | None:
        self._refresh()
        digest = tokens.hash_token(token).encode()
        found = None
        for op in self.operators:      # compare with every hash: no timing hint which matched
            if hmac.compare_digest(op.token_sha256.encode(), digest) and not op.revoked:
                found = op
        return found

    def index(self, op: Operator) -> int:
        return self.operators.index(op) + 1      # 0 = the switch itself in journal records


def _decode(path: Path) -> TokensFile:
    try:
        return msgspec.toml.decode(path.read_bytes(), type=TokensFile)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def read(path: Path) -> TokensFile:
    """The file's operators, validated; a clear token (an older file) comes back hashed."""
    data = _decode(path)
    for op in data.operator:
        unknown = set(op.roles) - set(ROLES)
        if unknown:
            raise ValueError(f"{path}: operator {op.name}: unknown roles {sorted(unknown)}")
        if op.token:
            if len(op.token) < tokens.TOKEN_CHARS_MIN:
                raise ValueError(f"{path}: operator {op.name}: token shorter than "
                                 f"{tokens.TOKEN_CHARS_MIN} characters")
            op.token_sha256, op.token = tokens.hash_token(op.token), ""
        if len(op.token_sha256) != tokens.HASH_HEX_CHARS and not op.revoked:
            raise ValueError(f"{path}: operator {op.name}: token_sha256 is not a SHA-256")
    return data


def write(path: Path, data: TokensFile) -> None:
    """Replace the file atomically, 0600 (a reader sees the old file or the new one)."""
    modes.write_private(path, HEADER + msgspec.toml.encode(data).decode())


def load_or_create(path: Path) -> tuple[Operators, dict[str, str]]:
    """The operators, and the tokens made now ({name: token}, to show once): one operator per
    role when there is no file yet. A file with clear tokens is rewritten with hashes."""
    created: dict[str, str] = {}
    if not path.exists():
        ops = []
        for role in ROLES:
            name = f"{role}-operator"
            created[name] = tokens.new_token()
            ops.append(Operator(name, [role], tokens.hash_token(created[name])))
        modes.private_dir(path.parent)
        write(path, TokensFile(ops))
    had_clear = any(op.token for op in _decode(path).operator)
    data = read(path)
    if had_clear:
        write(path, data)
        log.warning("tokens file %s held tokens in clear: rewritten with their hashes", path)
    modes.private_file(path)
    return Operators(tuple(data.operator), path), created
