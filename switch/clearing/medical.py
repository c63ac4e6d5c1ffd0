"""Medical clearing (issue 16, protocols/CLEARING.md "Medical"): per institution and insuring
fund, daily; a monthly claim per institution (the national platform's monthly clearing,
3203-style); and per pair of provinces for cross-province settlement, where the treating
province is owed by the card's home province.

From the same legs as the positions (approved MEDICAL and MEDICAL_REFUND records of the
dates, a refund counting negative), grouped with numpy.

And the institutions' own daily totals (3201-style, native MedicalTotals, journaled as
MEDICAL_TOTALS records) compared with the switch's records of the date, per terminal:
:func:`totals_differences`, each difference one :class:`MedicalDifference`.
"""

from __future__ import annotations

import datetime as dt
from typing import Final, NamedTuple

import msgspec
import numpy as np

from onecard.protocols import clearing
from onecard.protocols.codes import CODE_INDEX
from onecard.protocols.journal import KIND_BY_NAME
from onecard.protocols.journal_codec import view
from onecard.switch.clearing.positions import Reference, medical_amounts

MEDICAL = KIND_BY_NAME["MEDICAL"].value
REFUND = KIND_BY_NAME["MEDICAL_REFUND"].value
TOTALS = KIND_BY_NAME["MEDICAL_TOTALS"].value
APPROVED = CODE_INDEX["00"]
# What an institution's totals are compared on, in this order: the three shares (fen, net of
# refunds) and the two counts. The bill is not: it is the shares' sum on both sides.
COMPARED: Final = ("pool", "personal", "cash", "settlements", "refunds")


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
                          & (recs["rc"] == CODE_INDEX["00"])
                          # an unknown card or terminal has no fund or institution to
                          # total: an UNATTRIBUTED exception (exceptions.py), not a failure
                          & (recs["card"] < len(ref.card_province))
                          & (recs["terminal"] < len(ref.terminal_acquirer)))
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


class MedicalDifference(NamedTuple):
    """One value of an institution's totals of a settlement date that is not the switch's:
    an exception to raise with the institution (and to see on ``onecard clearing medical``)."""

    institution: str        # the terminal's institution: its acquirer key, as in Totals.key
    terminal: str           # the terminal that sent the totals (its id)
    settle_date: dt.date
    fund: str               # one of COMPARED: "pool", "personal", "cash" (fen), or a count
    switch_value: int       # from the switch's journal
    institution_value: int  # as the institution sent it
    record_no: int          # the MEDICAL_TOTALS record compared (the last sent for the date)


def _switch_totals(recs: np.ndarray, n_terminals: int, date: dt.date,
                   cutover: str) -> dict[str, np.ndarray]:
    """Per terminal, the switch's COMPARED values of the date: approved settlements and
    refunds decided on it (a refund negative in the shares), as medical() counts them."""
    days = clearing.settlement_days(recs["ts_us"], clearing.cutover_minutes(cutover))
    rows = np.flatnonzero((days == clearing.day_number(date))
                          & np.isin(recs["kind"], [MEDICAL, REFUND])
                          & (recs["rc"] == APPROVED)
                          & (recs["terminal"] < n_terminals))     # unknown: UNATTRIBUTED
    amounts = medical_amounts(recs, rows)
    refund = recs["kind"][rows] == REFUND
    terminal = recs["terminal"][rows].astype(np.int64)
    out = {"settlements": np.bincount(terminal[~refund], minlength=n_terminals),
           "refunds": np.bincount(terminal[refund], minlength=n_terminals)}
    for fund, share in (("pool", "pool"), ("personal", "personal"), ("cash", "amount")):
        out[fund] = np.zeros(n_terminals, dtype=np.int64)
        np.add.at(out[fund], terminal, np.where(refund, -amounts[share], amounts[share]))
    return out


def totals_differences(recs: np.ndarray, nos: np.ndarray, ref: Reference, date: dt.date, *,
                       cutover: str = clearing.CUTOVER_DEFAULT) -> list[MedicalDifference]:
    """Every difference between the totals institutions sent for settlement date ``date``
    and the switch's journal, sorted by institution, terminal and COMPARED order. Pure: the
    committed records ``recs`` (numbered ``nos``) and the registry ``ref`` in, nothing read
    or written elsewhere.

    Totals are per terminal (each terminal reports its own bills, as it is answered for
    them); of several sent for the date, the last (the highest record number) replaces the
    others, whenever sent. A terminal that sent no totals has no differences: institutions
    need not send them. Only this switch's own MEDICAL and MEDICAL_REFUND records are
    counted, as in medical(): bills of other regions' cards are in their issuers' journals."""
    recs = np.ascontiguousarray(recs)
    nos = np.asarray(nos)
    sent = np.flatnonzero((recs["kind"] == TOTALS) & (recs["rc"] == APPROVED)
                          & (view(recs, "medical_totals")["settle_day"]
                             == clearing.day_number(date)))
    if not len(sent):
        return []
    newest_first = sent[np.argsort(-nos[sent].astype(np.int64), kind="stable")]
    _, first_seen = np.unique(recs["terminal"][newest_first], return_index=True)
    last = newest_first[first_seen]              # per terminal, ascending terminal index
    theirs = view(recs, "medical_totals")
    ours = _switch_totals(recs, len(ref.terminal_acquirer), date, cutover)
    out = []
    for row in last.tolist():
        term = int(recs["terminal"][row])
        if term >= len(ref.terminal_acquirer):
            continue                     # no institution to raise it with
        for fund in COMPARED:
            field = fund if fund in ("settlements", "refunds") else f"{fund}_fen"
            mine, told = int(ours[fund][term]), int(theirs[field][row])
            if mine != told:
                out.append(MedicalDifference(
                    institution=str(ref.terminal_acquirer[term]),
                    terminal=ref.terminal_tid[term] if ref.terminal_tid else str(term),
                    settle_date=date, fund=fund, switch_value=mine, institution_value=told,
                    record_no=int(nos[row])))
    order = {f: i for i, f in enumerate(COMPARED)}
    return sorted(out, key=lambda d: (d.institution, d.terminal, order[d.fund]))


def totals_dates(recs: np.ndarray, first: dt.date, last: dt.date) -> list[dt.date]:
    """The settlement dates first..last some institution sent approved totals for."""
    recs = np.ascontiguousarray(recs)
    days = view(recs, "medical_totals")["settle_day"][(recs["kind"] == TOTALS)
                                                      & (recs["rc"] == APPROVED)]
    days = days[(days >= clearing.day_number(first)) & (days <= clearing.day_number(last))]
    return [clearing.day_date(d) for d in np.unique(days).tolist()]
