"""Operator tokens of the switches ``onecard cluster up`` starts (``--regions``, ``--switch``).

A switch makes one operator per role at its first start and hands their tokens over once: on
its standard output when that is a terminal, else in a 0600 file beside its operators file
(``security/first_tokens.py``). The switches ``cluster up`` starts run in the background with
their output going to ``switch.log``, so each would leave its tokens in a file of its own
data directory. Instead ``cluster up`` makes each switch's operators itself, before starting
it (the switch then finds its operators file and makes none), and hands all the tokens over
at once, by the same rule: printed on the terminal of whoever ran it, or, when its own
standard output is not a terminal (a script, CI, a log), written to
``DIR/operator-tokens.txt`` (0600) with only that path printed. Never into a switch's log.
The operators files keep only their hashes, and a lost or logged token is replaced with
``onecard operators rotate``."""

from __future__ import annotations

import sys
from pathlib import Path

from onecard.switch import config as configuration
from onecard.switch.admin import operators
from onecard.switch.security import modes

FILE_NAME = "operator-tokens.txt"


def make_operators(config_path: Path) -> dict[str, str]:
    """The operators of the switch configured by ``config_path``, made now: {name: token}
    ({} when its operators file exists already: their tokens were shown when it was made)."""
    _, created = operators.load_or_create(_tokens_file(config_path))
    return created


def _tokens_file(config_path: Path) -> Path:
    return configuration.tokens_path(configuration.load(config_path))


def show(tokens: dict[str, dict[str, str]], configs: dict[str, Path], directory: Path) -> None:
    """Hand the new tokens ({switch: {operator: token}}) over once: on an interactive
    terminal, else in ``directory/operator-tokens.txt`` (0600) whose path alone is printed;
    then per switch (``configs``: switch -> its configuration file) where their hashes are
    and how to replace a token."""
    if not any(tokens.values()):
        return
    rows = [f"  {switch:8} {name:20} {token}"
            for switch, created in tokens.items() for name, token in created.items()]
    if sys.stdout.isatty():
        print("operator tokens (Authorization: Bearer <token>), shown this once and written "
              "nowhere:")
        print("\n".join(rows))
    else:
        path = directory / FILE_NAME
        modes.write_private(path, "# switch   operator             token\n"
                                   + "".join(row + "\n" for row in rows))
        print(f"operator tokens (Authorization: Bearer <token>) in {path} (0600; standard "
              "output is not a terminal, so they are not printed): keep them elsewhere and "
              "delete the file")
    for switch, config in configs.items():
        print(f"  {switch:8} hashes in {_tokens_file(config)}; a lost token: onecard "
              f"operators rotate NAME --config {config}")

