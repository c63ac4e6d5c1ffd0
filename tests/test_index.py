"""The card index: every card found at its position, nothing else found, duplicates refused,
whatever the index size (its slots keep a hash tag in the bits the position does not need)."""

import numpy as np
import pytest

from onecard.bench.memory import synthetic_state
from onecard.core.state import CARD_DTYPE, State


@pytest.mark.parametrize("n", [1, 1000, 300_000])
def test_every_card_is_found_at_its_position_and_no_other_number_is(n):
    state = synthetic_state(n)
    pans = state.cards["pan"]
    assert state.count_known(pans) == n
    # The synthetic numbers are spaced 7,919 apart: their neighbours are not cards.
    assert state.count_known(pans + 1) == 0
    assert state.count_known(pans - 1) == 0
    rng = np.random.default_rng(5)
    for pos in rng.integers(0, n, size=min(n, 200)).tolist():
        assert state.card_index(int(pans[pos])) == pos


def test_a_duplicate_card_number_is_refused_with_its_position():
    state = synthetic_state(1000)
    cards = state.cards.copy()
    cards[700]["pan"] = cards[12]["pan"]
    kwargs = {name: getattr(state, name) for name in (
        "accounts", "terminals", "regions", "operators", "stations", "fares", "apps", "accept",
        "policies", "surnames")}
    with pytest.raises(ValueError, match="duplicate card number at position 700"):
        State(cards=np.ascontiguousarray(cards, dtype=CARD_DTYPE), **kwargs)


def test_cards_stay_findable_when_the_index_is_rebuilt_larger():
    state = synthetic_state(1000)
    before = len(state.card_slots)
    state.reserve_cards(5000)
    assert len(state.card_slots) > before
    assert state.count_known(state.cards["pan"]) == 1000
    assert state.count_known(state.cards["pan"] + 1) == 0
