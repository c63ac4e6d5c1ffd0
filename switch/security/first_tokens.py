"""The operator tokens a switch's first start makes: handed over without a log seeing them.

A switch makes one operator per role when it finds no operators file, and the tokens exist
in clear only then (the file keeps their hashes). Printed on standard output, they would end
in whatever collects it: the journal under systemd, ``switch.log`` under ``cluster up``, a
CI log. So they are printed only when standard output is an interactive terminal; otherwise
they are written to a file of their own (0600, beside the operators file, never in a backup)
and only its path is printed. Tokens seen in an old log are replaced with ``onecard
operators rotate NAME``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from onecard.switch.security import modes

FILE_NAME = "first-start-tokens.txt"


def file_for(tokens_file: Path) -> Path:
    """Where a first start writes its tokens: beside the operators file."""
    return tokens_file.with_name(FILE_NAME)


def lines(created: dict[str, str], roles: dict[str, str]) -> list[str]:
    """One line per new operator ({name: token}, {name: "role,role"})."""
    return [f"operator {name} roles {roles[name]} token {token}"
            for name, token in created.items()]


def write(path: Path, created: dict[str, str], roles: dict[str, str]) -> None:
    """The tokens in ``path`` (0600), one ``lines`` line each under a comment."""
    modes.write_private(path, "# onecard operator tokens (Authorization: Bearer <token>), made at "
                  "the first start.\n# Keep them elsewhere, then delete this file; only their "
                  "hashes are in the operators file.\n"
                  + "".join(line + "\n" for line in lines(created, roles)))


def read(path: Path) -> dict[str, tuple[str, str]]:
    """{name: (roles, token)} from a file ``write`` made (tests, scripts)."""
    found = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0] == "operator" and parts[4] == "token":
            found[parts[1]] = (parts[3], parts[5])
    return found


def hand_over(created: dict[str, str], roles: dict[str, str], tokens_file: Path,
              out: TextIO | None = None) -> Path | None:
    """Show new tokens on an interactive terminal, else write them to their file and print
    only its path; the file written, or None. Nothing when no token was made."""
    out = out or sys.stdout
    if not created:
        return None
    if out.isatty():
        for line in lines(created, roles):
            print(f"onecard: {line}", file=out)
        print("onecard: operator tokens shown this once (only their hashes are kept)",
              file=out, flush=True)
        return None
    path = file_for(tokens_file)
    write(path, created, roles)
    print(f"onecard: operator tokens in {path} (0600; standard output is not a terminal, so "
          "they are not printed): keep them elsewhere and delete the file", file=out,
          flush=True)
    return path
