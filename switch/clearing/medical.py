"""Medical clearing (issue 16, protocols/CLEARING.md "Medical"): per institution and insuring
fund, daily; a monthly claim per institution (the national platform's monthly clearing,
3203-style); and per pair of provinces for cross-province settlement, where the treating
province is owed by the card's home province.

From the same legs as the positions (approved MEDICAL and MEDICAL_REFUND records of the
dates, a refund counting negative), grouped with numpy.
"""

from __future__ import annotations

import datetime as dt

import msgspec
import numpy as np

from onecard.protocols import clearing
from onecard.protocols.codes import CODE_INDEX
from onecard.protocols.journal import KIND_BY_NAME
from onecard.switch.clearing.positions import Reference, medical_amounts

MEDICAL = KIND_BY_NAME["MEDICAL"].value
REFUND = KIND_BY_NAME["MEDICAL_REFUND"].value


class Totals(msgspec.Struct, frozen=True):
    key: list[str]          # what the totals are grouped by
    bills: int              # settlements minus refunds
    bill_fen: int
    pool_fen: int           # the pooled fund's share: what the institution claims from it
    personal_fen: int       # the personal medical accounts' share
    cash_fen: int           # what the cardholder paid


class Medical(msgspec.Struct, frozen=True):
    first: str              # the settlement dates covered, YYYY-MM-DD
    last: str
    by_institution_fund: list[Totals]     # key: [institution, insuring region code]
    by_institution: list[Totals]          # key: [institution]: the monthly claim
    cross_province: list[Totals]          # key: [treating province, home province]


def _group(keys: list[np.ndarray], labels, sign: np.ndarray,
           amounts: dict[str, np.ndarray]) -> list[Totals]:
    if not len(sign):
        return []
    stacked = np.stack(keys, axis=1)
    distinct, inverse = np.unique(stacked, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    sums = {}
    for name, values in amounts.items():
        total = np.zeros(len(distinct), dtype=np.int64)
        np.add.at(total, inverse, sign * values)
        sums[name] = total
    count = np.zeros(len(distinct), dtype=np.int64)
    np.add.at(count, inverse, sign)
    return [Totals(key=labels(row), bills=int(count[i]), bill_fen=int(sums["bill"][i]),
                   pool_fen=int(sums["pool"][i]), personal_fen=int(sums["personal"][i]),
                   cash_fen=int(sums["cash"][i]))
            for i, row in enumerate(distinct.tolist())]


def medical(recs: np.ndarray, ref: Reference, first: dt.date, last: dt.date, *,
            cutover: str = clearing.CUTOVER_DEFAULT) -> Medical:
    """Medical totals of the settlement dates first..last (a day, or a month)."""
    if ref.terminal_province is None:
        raise ValueError("medical clearing needs the terminals' provinces")
    recs = np.ascontiguousarray(recs)
    days = clearing.settlement_days(recs["ts_us"], clearing.cutover_minutes(cutover))
    rows = np.flatnonzero((days >= clearing.day_number(first))
                          & (days <= clearing.day_number(last))
                          & np.isin(recs["kind"], [MEDICAL, REFUND])
                          & (recs["rc"] == CODE_INDEX["00"]))
    amounts = medical_amounts(recs, rows)
    amounts["cash"] = amounts.pop("amount")
    sign = np.where(recs["kind"][rows] == REFUND, -1, 1).astype(np.int64)
    card = recs["card"][rows].astype(np.int64)
    terminal = recs["terminal"][rows].astype(np.int64)
    names, institution = np.unique(np.asarray(ref.terminal_acquirer, dtype=object)[terminal],
                                   return_inverse=True)
    region = ref.card_region[card]
    treating = np.asarray(ref.terminal_province)[terminal]
    home = ref.card_province[card]
    away = treating != home
    return Medical(
        first=first.isoformat(), last=last.isoformat(),
        by_institution_fund=_group([institution, region], lambda r: [str(names[r[0]]),
                                                                     str(r[1])],
                                   sign, amounts),
        by_institution=_group([institution], lambda r: [str(names[r[0]])], sign, amounts),
        cross_province=_group([treating[away], home[away]], lambda r: [str(r[0]), str(r[1])],
                              sign[away], {k: v[away] for k, v in amounts.items()}))
