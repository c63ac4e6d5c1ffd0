"""kill -9 under load, on SQLite and on PostgreSQL: every approval a terminal received is in
the journal, balances after restart are the opening balances minus exactly the journaled
debits, and a retried request gets its original answer (tests/checker.py)."""

import pytest

from checker import Load, check_exactly_once, opening_balances
from conftest import BACKENDS, start_switch

pytestmark = [pytest.mark.slow,
              pytest.mark.parametrize("backend", BACKENDS, indirect=True)]

KILL_AFTER_APPROVALS = 400
MAX_WAIT_S = 30


def test_kill9_under_load_recovers_exactly_the_committed_state(switch_dir, world):
    sw = start_switch(switch_dir)
    cards = [world.card(nth=i)[0] for i in range(24)]
    opening = opening_balances(sw, world, cards)
    load = Load(sw, world, cards, deadline_s=MAX_WAIT_S + 30)
    reached = load.wait_for(KILL_AFTER_APPROVALS, MAX_WAIT_S)
    sw.kill9()
    load.finish()
    assert reached, "load did not get going"

    sw = start_switch(switch_dir)
    try:
        assert check_exactly_once(sw, world, load, opening) >= KILL_AFTER_APPROVALS
    finally:
        sw.stop()
