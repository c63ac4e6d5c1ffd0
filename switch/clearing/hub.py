"""Hub netting between regional switches (issue 16, protocols/CLEARING.md "Regions").

Each region clears its own journal. A Jiangsu card used at a Shanghai merchant is journaled
by Jiangsu (its issuer decides and commits it), so Jiangsu's positions hold the Shanghai
merchant's credit: Jiangsu owes Shanghai for it. The hub takes every region's positions of a
date, finds each party's home region (an issuer, deposit or fund: the owner of its province;
an acquirer: the owner of its terminals' province; the scheme: the hub itself) and nets what
each region's clearing says it owes the parties of another: a matrix of region-to-region
amounts, and one net position per region, summing to zero to the fen.

It also finds the **late approvals** between two regions: a request the acquirer answered
`91` (its FORWARDED record of origin UNAVAILABLE: the issuer did not answer in time) that the
issuer nevertheless approved, and that no reversal undid (ISO 8583 purchases get a reversal
advice; native taps, venue entries, medical bills and top-ups have none). The terminal was
told "declined" while the card was charged: an exception for an operator to resolve.
"""

from __future__ import annotations

import datetime as dt

import msgspec
import numpy as np

from onecard.protocols import clearing, forward
from onecard.protocols.codes import CODE_INDEX
from onecard.protocols.journal import KIND_BY_NAME, KIND_BY_VALUE
from onecard.protocols.journal_codec import view
from onecard.switch.clearing.positions import Day, Position
from onecard.switch.errors import ClearingError

HUB = "hub"                                  # the scheme's own fees are the hub's


class Flow(msgspec.Struct, frozen=True):
    payer: str              # the region whose clearing owes it
    payee: str              # the region of the parties owed
    fen: int                # > 0


class RegionNet(msgspec.Struct, frozen=True):
    region: str
    net_fen: int            # > 0: the region is to be paid by the others


class Hub(msgspec.Struct, frozen=True):
    date: str
    flows: list[Flow]
    regions: list[RegionNet]


class LateApproval(msgspec.Struct, frozen=True):
    id: str                 # stable: LATE-<issuer>-<issuer record>, what an operator cites
    acquirer: str           # the region whose terminal was told 91
    issuer: str             # the region that approved the request
    terminal: int           # index in the (shared) terminal registry
    seq: int                # the request's STAN or sequence
    kind: str               # the issuer's record kind (TAP, VENUE, ...)
    amount_fen: int
    issuer_record_no: int


class HubError(ClearingError, ValueError):
    """A party whose home region cannot be told (the message names it)."""


def home(p: Position, owners: dict[int, str], acquirer_province: dict[str, int]) -> str:
    """The region a party belongs to."""
    role, _, key = p.party.partition(":")
    if role == "scheme":
        return HUB
    if role == "acquirer":
        province = acquirer_province.get(key)
    elif role in ("issuer", "deposit"):
        province = int(key)
    elif role in ("pool", "personal"):
        province = int(key) // 10_000            # a region code's first two digits
    else:
        return ""        # a programme (the region that paid it) or suspense (the region's own)
    if province is None or province not in owners:
        raise HubError(f"party {p.party}: no region owns its province {province}")
    return owners[province]


def net(days: dict[str, Day], owners: dict[int, str],
        acquirer_province: dict[str, int]) -> Hub:
    """Region-to-region amounts and each region's net position, from every region's
    positions of one date (``days``: region -> its Day)."""
    dates = {d.date for d in days.values()}
    if len(dates) > 1:
        raise HubError(f"positions of different dates: {sorted(dates)}")
    owed: dict[tuple[str, str], int] = {}
    for region, day in days.items():
        for p in day.positions:
            where = home(p, owners, acquirer_province) or region
            if where != region and p.net_fen:
                owed[(region, where)] = owed.get((region, where), 0) + p.net_fen
    pairs: dict[tuple[str, str], int] = {}
    for (payer, payee), fen in owed.items():            # net each pair both ways
        key = (payer, payee) if payer < payee else (payee, payer)
        pairs[key] = pairs.get(key, 0) + (fen if payer < payee else -fen)
    flows = sorted(((Flow(payer=a, payee=b, fen=fen) if fen > 0 else
                     Flow(payer=b, payee=a, fen=-fen))
                    for (a, b), fen in pairs.items() if fen), key=lambda f: (f.payer, f.payee))
    totals: dict[str, int] = {r: 0 for r in days}
    for f in flows:
        totals[f.payee] = totals.get(f.payee, 0) + f.fen
        totals[f.payer] = totals.get(f.payer, 0) - f.fen
    assert sum(totals.values()) == 0, totals
    return Hub(date=next(iter(dates), ""), flows=flows,
               regions=[RegionNet(region=r, net_fen=v) for r, v in sorted(totals.items())])


FORWARDED = KIND_BY_NAME["FORWARDED"].value
REVERSAL = KIND_BY_NAME["REVERSAL"].value
MONEY_KINDS = [KIND_BY_NAME[k].value for k in clearing.LEGS]


def _keys(recs: np.ndarray) -> np.ndarray:
    return (recs["terminal"].astype(np.uint64) << np.uint64(32)) | recs["seq"].astype(np.uint64)


def late_approvals(acquirer: str, acq_recs: np.ndarray, issuer: str, iss_recs: np.ndarray,
                   iss_nos: np.ndarray, date: dt.date, *,
                   cutover: str = clearing.CUTOVER_DEFAULT) -> list[LateApproval]:
    """The acquirer's 91s of the date (its FORWARDED records of origin UNAVAILABLE) that the
    issuer's journal holds as approved money records and no reversal of the same terminal and
    sequence undid."""
    acq_recs, iss_recs = np.ascontiguousarray(acq_recs), np.ascontiguousarray(iss_recs)
    day = clearing.day_number(date)
    told_91 = ((acq_recs["kind"] == FORWARDED)
               & (view(acq_recs, "forwarded")["origin"] == forward.ORIGIN["UNAVAILABLE"])
               & (clearing.settlement_days(acq_recs["ts_us"],
                                           clearing.cutover_minutes(cutover)) == day))
    # The issuer decided it within seconds of the acquirer's timeout: the same settlement
    # date or, across the cut-over, the next (a sequence number repeats over longer times).
    iss_day = clearing.settlement_days(iss_recs["ts_us"], clearing.cutover_minutes(cutover))
    approved = (iss_recs["rc"] == CODE_INDEX["00"]) & (iss_day >= day) & (iss_day <= day + 1)
    reversed_keys = _keys(iss_recs[approved & (iss_recs["kind"] == REVERSAL)])
    money = approved & np.isin(iss_recs["kind"], MONEY_KINDS) & (iss_recs["kind"] != REVERSAL)
    rows = np.flatnonzero(money)
    keys = _keys(iss_recs[rows])
    late = np.isin(keys, _keys(acq_recs[told_91])) & ~np.isin(keys, reversed_keys)
    return [LateApproval(id=f"LATE-{issuer}-{int(no)}", acquirer=acquirer, issuer=issuer,
                         terminal=int(r["terminal"]),
                         seq=int(r["seq"]), kind=KIND_BY_VALUE[int(r["kind"])].name,
                         amount_fen=int(r["amount_fen"]), issuer_record_no=int(no))
            for r, no in zip(iss_recs[rows[late]], iss_nos[rows[late]].tolist(), strict=True)]
