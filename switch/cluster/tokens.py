"""Operator tokens of the switches ``onecard cluster up`` starts (``--regions``, ``--switch``).

A switch makes one operator per role at its first start and prints their tokens once on its
standard output. The switches ``cluster up`` starts run in the background with that output
going to ``switch.log``, so left to themselves they would write the tokens there, in clear.
Instead ``cluster up`` makes each switch's operators itself, before starting it (the switch
then finds its operators file and makes none), and prints the tokens once on the terminal of
whoever ran it. They are written nowhere: the operators file keeps only their hashes, and a
lost token is replaced with ``onecard operators rotate``."""

from __future__ import annotations

from pathlib import Path

from onecard.switch import config as configuration
from onecard.switch.admin import operators


def make_operators(config_path: Path) -> dict[str, str]:
    """The operators of the switch configured by ``config_path``, made now: {name: token}
    ({} when its operators file exists already: their tokens were shown when it was made)."""
    _, created = operators.load_or_create(_tokens_file(config_path))
    return created


def _tokens_file(config_path: Path) -> Path:
    return configuration.tokens_path(configuration.load(config_path))


def show(tokens: dict[str, dict[str, str]], configs: dict[str, Path]) -> None:
    """Print the new tokens ({switch: {operator: token}}) once, and per switch (``configs``:
    switch -> its configuration file) where their hashes are and how to replace a token."""
    if not any(tokens.values()):
        return
    print("operator tokens (Authorization: Bearer <token>), shown this once and written "
          "nowhere:")
    for switch, created in tokens.items():
        for name, token in created.items():
            print(f"  {switch:8} {name:20} {token}")
    for switch, config in configs.items():
        print(f"  {switch:8} hashes in {_tokens_file(config)}; a lost token: onecard "
              f"operators rotate NAME --config {config}")
