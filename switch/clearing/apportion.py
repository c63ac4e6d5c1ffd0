"""Transit apportionment of transfer journeys (issue 16, protocols/CLEARING.md "Transit
apportionment").

A ride that starts within the city's transfer window gets the region's transfer discount
(core/transit.pyx), and its tap record keeps it (``transfer_discount_fen``). Without this
module the whole discount would fall on the operator of that second leg, since each tap pays
its own operator what was charged on it. Here a journey's charged total is split between the
operators of its two legs in proportion to their undiscounted fares, the remainder fen to
the last leg, exact in integer fen; the difference from what each leg charged moves from the
first leg's operator to the second's as one extra pair of legs, so the day still nets to
zero. Fees stay on the charged amounts (the tap's own legs): the apportionment moves money
between operators only.

Numpy over the records, no Python per record: the previous leg of every discounted tap is
found by one sort of the candidate taps by account and journal record number.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from onecard.protocols.codes import CODE_INDEX
from onecard.protocols.journal import KIND_BY_NAME
from onecard.protocols.journal_codec import view

APPROVED = CODE_INDEX["00"]
TAP_KINDS = (KIND_BY_NAME["TAP"].value, KIND_BY_NAME["OFFLINE_TAP"].value)


class Journeys(NamedTuple):
    """Apportioned journeys, one per discounted leg: rows of the records given.

    A journey within one operator moves money from that operator to itself: ``legs``
    (positions.py) leaves those out."""
    first: np.ndarray       # the journey's previous leg (it may be of an earlier date)
    second: np.ndarray      # the discounted leg, of the settlement date
    moved: np.ndarray       # fen the first leg's operator owes the second's: charged1 - share1


def shares(charged1: np.ndarray, discount1: np.ndarray, charged2: np.ndarray,
           discount2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each journey's total charged, T = charged1 + charged2, split in proportion to the
    undiscounted fares U1 = charged1 + discount1 and U2 = charged2 + discount2: the first
    leg floor(T * U1 / (U1 + U2)), the last leg the rest (so the remainder fen is the last
    leg's). Integer fen throughout; the two shares always sum to T exactly."""
    c1, d1, c2, d2 = (np.asarray(a, dtype=np.int64) for a in (charged1, discount1, charged2,
                                                              discount2))
    total, u1 = c1 + c2, c1 + d1
    whole = u1 + c2 + d2
    # A journey with no fare at all (both legs free) has nothing to split: 0 and 0.
    first = np.where(whole > 0, total * u1 // np.maximum(whole, 1), 0)
    return first, total - first


def ride_ends(recs: np.ndarray) -> np.ndarray:
    """Approved tap records that ended a ride: a flat fare (buses and ferries report no
    station) or a metro tap-out, free ones too (a concession), as the switch counts the
    transfer window from any of them. A metro tap-in (direction 0 at a station) opens a
    ride and charges at most the maximum fare of a trip left open before: never a leg."""
    tap = view(recs, "tap")
    out = np.isin(recs["kind"], TAP_KINDS) & (recs["rc"] == APPROVED)
    out &= (tap["direction"] == 1) | (tap["station_id"] == 0)
    return out


def journeys(recs: np.ndarray, nos: np.ndarray, rows: np.ndarray) -> Journeys:
    """The journeys the discounted taps among ``rows`` (the date's approved records) end:
    each one's previous leg is the same account's latest ride (``ride_ends``) before it by
    journal record number, on any date of ``recs``. A discounted tap whose previous leg is
    not in ``recs`` (a journal pruned before it) is left out. A chain (a third leg
    discounted against the second) is apportioned pair by pair, each discounted leg against
    the leg before it."""
    tap = view(recs, "tap")
    rows = np.asarray(rows, dtype=np.int64)
    discounted = rows[np.isin(recs["kind"][rows], TAP_KINDS)
                      & (tap["transfer_discount_fen"][rows] > 0)]
    empty = np.zeros(0, dtype=np.int64)
    if not len(discounted):
        return Journeys(empty, empty, empty)
    account = recs["account"]
    # Only the accounts with a discounted leg today: their rides, by account, then by number.
    ends = ride_ends(recs) & np.isin(account, account[discounted])
    ends[discounted] = True            # a discount is a ride's end, whatever the gate said
    cand = np.flatnonzero(ends)
    cand = cand[np.lexsort((nos[cand], account[cand]))]
    at = np.flatnonzero(np.isin(cand, discounted))
    at = at[at > 0]
    at = at[account[cand[at - 1]] == account[cand[at]]]
    first, second = cand[at - 1], cand[at]
    charged1, charged2 = (recs["amount_fen"][r].astype(np.int64) for r in (first, second))
    share1, _ = shares(charged1, tap["transfer_discount_fen"][first], charged2,
                       tap["transfer_discount_fen"][second])
    return Journeys(first, second, charged1 - share1)


def between(j: Journeys, keep: np.ndarray) -> Journeys:
    """The journeys ``keep`` (a mask) selects."""
    return Journeys(j.first[keep], j.second[keep], j.moved[keep])
