"""Every wire and durable enum is declared once, in protocols/: the compiled core's copies agree
with the tables (and a disagreement stops the import), and the admin API, the CLI and the
documents take their names from the tables."""

import enum
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onecard.core import crypto, native_msg, state
from onecard.protocols import native
from onecard.protocols.enums import (
    APPLICATION_FUNCTIONS,
    CARD_STATUS,
    FUNCTION,
    MAC_ALGORITHM,
    PROTO,
    STATE_TABLES,
    TERMINAL_KIND,
)
from onecard.switch import cli, server
from onecard.switch import terminals as switch_terminals
from onecard.switch.admin import routes as admin

ROOT = Path(__file__).resolve().parent.parent
# Transaction kinds are the journal's table (protocols/journal.py), not protocols/enums.py.
NOT_IN_ENUMS = {"Kind"}


# ---- the compiled core agrees with the tables --------------------------------------------------


@pytest.mark.parametrize("table", STATE_TABLES, ids=lambda t: t.core_enum)
def test_every_row_is_the_state_module_constant_of_the_same_name(table):
    for member in table.members:
        assert getattr(state, member.symbol) == member.value, member
    compiled = getattr(state, table.core_enum)
    assert {n: int(m) for n, m in compiled.__members__.items()} == table.symbols()


def test_every_enum_state_exports_has_a_table():
    exported = {name for name, value in vars(state).items()
                if not name.startswith("_") and isinstance(value, type)
                and issubclass(value, enum.Enum)}
    assert exported - NOT_IN_ENUMS == {t.core_enum for t in STATE_TABLES}


def test_native_tags_are_the_native_msg_constants_of_the_same_name():
    for symbol, value in native.CORE_CONSTANTS.items():
        assert getattr(native_msg, symbol) == value, symbol
    for m in native.MESSAGES:
        request, reply = getattr(native, m.request), getattr(native, m.reply)
        assert request.__struct_config__.tag == m.tag
        assert reply.__struct_config__.tag == m.tag + native.REPLY_OFFSET
    assert native.ErrorReply.__struct_config__.tag == native.TAG_ERROR


def test_mac_algorithms_are_the_crypto_constants_of_the_same_name():
    for member in MAC_ALGORITHM.members:
        assert getattr(crypto, member.symbol) == member.value
    assert crypto.ALGORITHMS == MAC_ALGORITHM.value_of
    key = bytes(range(16))
    for name in MAC_ALGORITHM.value_of:                        # every named algorithm works
        assert len(crypto.mac(name, key, b"onecard")) == 8


# A table edited without the Cython enum (or the other way round) must not start a switch.
DISAGREEMENTS = {
    "a renumbered card status": ("onecard.core.state", """
import onecard.protocols.enums as e
t = e.CARD_STATUS
bad = e.EnumTable(t.core_enum, (t.members[0]._replace(value=9), *t.members[1:]))
e.STATE_TABLES = tuple(bad if x is t else x for x in e.STATE_TABLES)
"""),
    "a terminal kind the core lacks": ("onecard.core.state", """
import onecard.protocols.enums as e
t = e.TERMINAL_KIND
bad = e.EnumTable(t.core_enum, (*t.members, e.Member(9, "TERM_ATM", "atm")))
e.STATE_TABLES = tuple(bad if x is t else x for x in e.STATE_TABLES)
"""),
    "a renumbered native tag": ("onecard.core.native_msg", """
import onecard.protocols.native as n
n.CORE_CONSTANTS["TAG_TAP"] = 33
"""),
    "swapped MAC algorithm codes": ("onecard.core.crypto", """
import onecard.protocols.enums as e
e.MAC_ALGORITHM = e.EnumTable("", tuple(m._replace(value=3 - m.value)
                                        for m in e.MAC_ALGORITHM.members))
"""),
}


@pytest.mark.parametrize("case", DISAGREEMENTS)
def test_a_disagreement_stops_the_import(case):
    module, patch = DISAGREEMENTS[case]
    out = subprocess.run([sys.executable, "-c", f"{patch}\nimport {module}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "AssertionError" in out.stderr, out.stderr
    assert f"{module.rsplit('.', 1)[1]}.pyx" in out.stderr         # the module's own check


# ---- names come from the tables ----------------------------------------------------------------


def test_switch_name_maps_are_the_tables():
    assert admin.STATUS_NAMES is CARD_STATUS.name_of
    assert switch_terminals.KIND_NAMES is TERMINAL_KIND.name_of
    assert switch_terminals.ALG_NAMES is MAC_ALGORITHM.name_of
    assert server.PROTOCOL_NAMES is PROTO.name_of


def test_cli_terminal_kinds_are_the_table_names():
    sub = next(a for a in cli.parser()._actions if a.dest == "command")
    kind = next(a for a in sub.choices["terminals"]._actions if a.dest == "kind")
    assert list(kind.choices) == [m.name for m in TERMINAL_KIND.members]


@pytest.mark.slow
def test_card_views_name_status_and_functions_from_the_tables(api, supply):
    cards = supply.world.state.cards
    # The first card of every status and of every function mask in the demo data.
    picked = {int(np.flatnonzero(cards[field] == v)[0])
              for field in ("status", "functions") for v in np.unique(cards[field])}
    for idx in sorted(picked):
        view = api.view(str(int(cards["pan"][idx])))
        assert view["status"] == CARD_STATUS.name_of[int(cards["status"][idx])]
        assert view["functions"] == FUNCTION.names(int(cards["functions"][idx]))
    assert {int(s) for s in cards["status"][sorted(picked)]} >= {
        state.CARD_ACTIVE, state.CARD_LOST, state.CARD_FROZEN, state.CARD_CANCELLED}
    old = supply.card(31)
    r = api.post(f"/admin/cards/{old}/ecard")
    assert r.status == 201, r.text
    assert "electronic" in r.json()["functions"]
    assert api.post(f"/admin/cards/{old}/replace").status == 201
    assert api.view(old)["status"] == CARD_STATUS.name_of[state.CARD_REPLACED]


# ---- documents agree with the tables -----------------------------------------------------------


def test_native_md_lists_the_tags_of_the_table():
    text = (ROOT / "protocols" / "NATIVE.md").read_text()
    documented = {name: int(tag) for tag, name in re.findall(r"^\| (\d+) \| `(\w+)` \|", text,
                                                            re.MULTILINE)}
    assert documented == native.TAGS


def test_admin_api_md_lists_the_status_and_function_names():
    text = " ".join((ROOT / "docs" / "admin-api.md").read_text().split())
    statuses = re.search(r"`status` is one of ((?:`\w+`(?:, )?)+)", text)
    functions = re.search(r"`functions` lists [^:]*: ((?:`\w+`(?:, )?)+)", text)
    assert statuses and re.findall(r"`(\w+)`", statuses[1]) == list(CARD_STATUS.value_of)
    assert functions and re.findall(r"`(\w+)`", functions[1]) == list(FUNCTION.value_of)
    bits = re.search(r"`functions` is the card functions the application needs \(bits: ([^)]*)\)",
                     text)
    assert bits and {int(v): n for v, n in re.findall(r"(\d+) (\w+)", bits[1])} == {
        v: n for v, n in FUNCTION.name_of.items() if v & APPLICATION_FUNCTIONS}
