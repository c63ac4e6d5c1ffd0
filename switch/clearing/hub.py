"""Hub netting between regional switches (issue 16, protocols/CLEARING.md "Regions").

Each region clears its own journal. A Jiangsu card used at a Shanghai merchant is journaled
by Jiangsu (its issuer decides and commits it), so Jiangsu's positions hold the Shanghai
merchant's credit: Jiangsu owes Shanghai for it. The hub takes every region's positions of a
date, finds each party's home region (an issuer, deposit or fund: the owner of its province;
an acquirer: the owner of its terminals' province; the scheme: the hub itself) and nets what
each region's clearing says it owes the parties of another: a matrix of region-to-region
amounts, and one net position per region, summing to zero to the fen.
"""

from __future__ import annotations

import msgspec

from onecard.switch.clearing.positions import Day, Position

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


class HubError(ValueError):
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
        return ""                                # a programme: the region that paid it
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
