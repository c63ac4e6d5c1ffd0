"""Clearing exceptions of a settlement date (issue 16, protocols/CLEARING.md): what
reconciliation finds, from the committed journal alone, and the adjustments (差错调整) that
resolved them.

POS batches: a 0500 answered "not balanced" (a SETTLE record of result 2) is followed by the
terminal's 0320 upload of its batch (BATCH_UPLOAD records after it). The switch's batch is the
terminal's approved purchases and voids between its previous SETTLE and this one, less those
reversed; the terminal's is what it uploaded (a transaction uploaded twice counts once, the
last copy). Compared by kind and STAN: missing at either side, amount or card mismatch; the
end's count against the transactions uploaded; a batch whose upload has not ended.

Unattributed records (issue 28): an approved money record naming no card, or a card,
terminal or programme the registry does not have, is cleared with the suspense party in the
unknown party's place (positions.py) and listed here, its journal record number as its
reference, so a date is never refused for it.

An exception's id names it for good (the date, kind, terminal, reference and STAN): the same
journal gives the same exceptions, and an ADJUSTMENT record naming the same kind, terminal,
reference and STAN resolves it.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import msgspec
import numpy as np

from onecard.protocols import clearing
from onecard.protocols.journal import FLAG, KIND_BY_NAME, KIND_BY_VALUE, NONE
from onecard.protocols.journal_codec import view
from onecard.switch.clearing import medical
from onecard.switch.clearing.files import mask_pan
from onecard.switch.clearing.positions import (
    APPROVED,
    Reference,
    moving_rows,
    unattributed,
)

K = {name: KIND_BY_NAME[name].value for name in (
    "PURCHASE", "VOID", "REVERSAL", "VOID_REVERSAL", "SETTLE", "BATCH_UPLOAD", "FORWARDED",
    "ADJUSTMENT")}
CNY = 156
REF_MASK = 0xFFFFFFFF                    # adjustment.ref is a u32
UNBALANCED = 2                           # settle.result: the totals did not agree
UNDID = FLAG["APPROVED"]                 # a reversal's flags: it undid an approved original
BATCH_KINDS = [K[k] for k in ("PURCHASE", "VOID", "REVERSAL", "VOID_REVERSAL", "FORWARDED")]
UNDOES = {K["REVERSAL"]: K["PURCHASE"], K["VOID_REVERSAL"]: K["VOID"]}


class Adjustment(msgspec.Struct, frozen=True):
    record_no: int
    amount_fen: int
    direction: str           # "acquirer_owed" | "acquirer_owes"
    operator: int            # index into the operators (the admin log names them)
    date: str                # the settlement date whose positions it moved


class Exception_(msgspec.Struct, frozen=True):
    id: str                  # YYYYMMDD-KIND-TID-REF-STAN
    date: str                # the settlement date of what was reconciled
    kind: str                # a protocols.clearing.EXCEPTIONS name
    detail: str              # one sentence an operator can act on
    terminal: str            # its id (field 41)
    terminal_idx: int
    acquirer: str            # party
    ref: int                 # batch number (POS), or the day number (medical totals)
    seq: int                 # STAN, or the fund (medical totals)
    card: str                # masked, "" when none
    card_idx: int            # -1 when the switch knows no card (no issuer to adjust against)
    issuer: str              # party, "" when no card
    switch_amount_minor: int
    terminal_amount_minor: int
    currency: int
    suggested_fen: int       # what an adjustment would move to follow the terminal
    suggested_direction: str
    status: str = "open"     # "open" | "resolved"
    adjustment: Adjustment | None = None
    reason: str = ""         # UNATTRIBUTED: no_card, unknown_card, unknown_terminal,
                             #   unknown_programme (positions.unattributed)


class Item(NamedTuple):
    amount_minor: int
    currency: int
    card: int                # card index, NONE unknown
    masked: str


def exception_id(date: dt.date, kind: str, tid: str, ref: int, seq: int) -> str:
    return f"{date:%Y%m%d}-{kind}-{tid}-{ref}-{seq}"


def parse_id(text: str) -> tuple[dt.date, str]:
    """The date and kind an exception id names; ValueError if it names none."""
    parts = text.split("-")
    if len(parts) != 5 or parts[1] not in clearing.EXCEPTION:
        raise ValueError(f"{text!r} is not an exception id (YYYYMMDD-KIND-TID-REF-STAN)")
    try:
        return dt.datetime.strptime(parts[0], "%Y%m%d").date(), parts[1]
    except ValueError:
        raise ValueError(f"{text!r} does not begin with a date (YYYYMMDD)") from None


def _switch_batch(recs: np.ndarray, rows: np.ndarray, ref: Reference) -> dict:
    """The batch as the switch has it: (kind, STAN) -> Item, the undone ones left out."""
    pay, fwd = view(recs, "payment"), view(recs, "forwarded")
    items: dict[tuple[int, int], Item] = {}
    for r in rows.tolist():
        kind, seq = int(recs["kind"][r]), int(recs["seq"][r])
        if kind == K["FORWARDED"]:
            if fwd["repeated"][r] or recs["rc"][r] != APPROVED:
                continue
            kind = int(fwd["orig_kind"][r])
            amount, currency = int(fwd["amount_asked_minor"][r]), int(fwd["currency"][r])
        elif recs["rc"][r] != APPROVED:
            continue
        else:
            amount, currency = int(pay["amount_asked_minor"][r]), int(pay["currency"][r])
        if kind in UNDOES:
            if recs["flags"][r] & UNDID:
                items.pop((UNDOES[kind], seq), None)
            continue
        if kind in (K["PURCHASE"], K["VOID"]):
            card = int(recs["card"][r])
            pans = ref.card_pan
            masked = ""
            if card != NONE and pans is not None and card < len(pans):
                masked = mask_pan(int(pans[card]))
            items[(kind, seq)] = Item(amount, currency, card, masked)
    return items


def _uploaded(recs: np.ndarray, rows: np.ndarray) -> tuple[dict, int | None]:
    """The batch as the terminal uploaded it, and the count its last end gave (None: no end
    yet)."""
    up = view(recs, "upload")
    items: dict[tuple[int, int], Item] = {}
    count = None
    for r in rows.tolist():
        kind = int(up["orig_kind"][r])
        if kind == 0:
            count = int(up["count"][r])
            continue
        digits = str(int(up["pan_masked"][r])).zfill(10)
        stars = "*" * max(int(up["pan_len"][r]) - 10, 0)
        items[(kind, int(recs["seq"][r]))] = Item(
            int(up["amount_asked_minor"][r]), int(up["currency"][r]), int(recs["card"][r]),
            digits[:6] + stars + digits[6:])
    return items, count


class _Batch(NamedTuple):
    date: dt.date
    terminal: int
    tid: str
    acquirer: str
    batch_no: int


def _make(b: _Batch, ref: Reference, kind: str, seq: int, detail: str, mine: Item | None,
          theirs: Item | None, follow_fen: int = 0) -> Exception_:
    """An exception about ``seq`` of batch ``b``; ``follow_fen``: what the acquirer is owed
    (> 0) or owes (< 0) if the terminal's side is right."""
    card = next((i.card for i in (mine, theirs) if i is not None and i.card != NONE), NONE)
    masked = next((i.masked for i in (mine, theirs) if i is not None and i.masked), "")
    known = card != NONE and card < len(ref.card_province)
    return Exception_(
        id=exception_id(b.date, kind, b.tid, b.batch_no, seq), date=b.date.isoformat(),
        kind=kind, detail=detail, terminal=b.tid, terminal_idx=b.terminal,
        acquirer=f"acquirer:{b.acquirer}", ref=b.batch_no, seq=seq, card=masked,
        card_idx=card if known else -1,
        issuer=f"issuer:{int(ref.card_province[card])}" if known else "",
        switch_amount_minor=mine.amount_minor if mine else 0,
        terminal_amount_minor=theirs.amount_minor if theirs else 0,
        currency=either.currency if (either := mine or theirs) else CNY,
        suggested_fen=abs(follow_fen),
        suggested_direction="acquirer_owes" if follow_fen < 0 else "acquirer_owed")


def _fen(item: Item | None) -> int:
    """An amount adjustments can follow as it is: fen (other currencies: the operator
    converts, as the day's rate decided)."""
    return item.amount_minor if item is not None and item.currency == CNY else 0


def _compare(b: _Batch, ref: Reference, mine: dict, theirs: dict,
             count: int | None) -> list[Exception_]:
    out = []
    what = {K["PURCHASE"]: "purchase", K["VOID"]: "void"}
    if count is None:
        return [_make(b, ref, "NOT_UPLOADED", 0, f"batch {b.batch_no} was not balanced and "
                      f"its upload has not ended (0320, network code 202)", None, None)]
    if count != len(theirs):
        out.append(_make(b, ref, "COUNT_MISMATCH", 0, f"the upload's end counts {count} "
                         f"transactions, {len(theirs)} were uploaded", None, None))
    for key in sorted(mine.keys() | theirs.keys(), key=lambda k: (k[1], k[0])):
        s, t = mine.get(key), theirs.get(key)
        name, seq = what[key[0]], key[1]
        sign = 1 if key[0] == K["PURCHASE"] else -1      # a void credits the cardholder
        if s is None:
            out.append(_make(b, ref, "MISSING_AT_SWITCH", seq, f"the terminal has {name} "
                             f"STAN {seq:06d}, the switch does not", s, t, sign * _fen(t)))
        elif t is None:
            out.append(_make(b, ref, "MISSING_AT_TERMINAL", seq, f"the switch approved "
                             f"{name} STAN {seq:06d}, the terminal did not upload it", s, t,
                             -sign * _fen(s)))
        elif (s.amount_minor, s.currency) != (t.amount_minor, t.currency):
            out.append(_make(b, ref, "AMOUNT_MISMATCH", seq, f"{name} STAN {seq:06d}: the "
                             f"switch has {s.amount_minor} ({s.currency}), the terminal "
                             f"{t.amount_minor} ({t.currency})", s, t,
                             sign * (_fen(t) - _fen(s))))
        elif s.card != NONE and s.card != t.card:
            out.append(_make(b, ref, "CARD_MISMATCH", seq, f"{name} STAN {seq:06d}: the "
                             f"switch has card {s.masked}, the terminal {t.masked}", s, t))
    return out


def _batches(recs: np.ndarray, ref: Reference, date: dt.date,
             cutover_min: int) -> list[Exception_]:
    """Reconcile every batch settled unbalanced on the date with its upload."""
    kind = recs["kind"]
    settles = np.flatnonzero(kind == K["SETTLE"])
    st = view(recs, "settle")
    unbalanced = settles[(clearing.settlement_days(recs["ts_us"][settles], cutover_min)
                          == clearing.day_number(date))
                         & (st["result"][settles] == UNBALANCED)
                         & (recs["rc"][settles] == APPROVED)]
    if len(unbalanced) == 0:
        return []
    # A 0500 of a terminal the registry does not have cannot be reconciled against its
    # acquirer: left out (its money records are UNATTRIBUTED exceptions), never a refused day.
    unbalanced = unbalanced[recs["terminal"][unbalanced] < len(ref.terminal_acquirer)]
    if len(unbalanced) == 0:
        return []
    terminals = np.unique(recs["terminal"][unbalanced])
    # only the rows of those terminals are looked at again (a few, of millions)
    rows = np.flatnonzero(np.isin(recs["terminal"], terminals)
                          & np.isin(kind, [*BATCH_KINDS, K["SETTLE"], K["BATCH_UPLOAD"]]))
    by_terminal = {int(t): rows[recs["terminal"][rows] == t] for t in terminals.tolist()}
    batch_no = view(recs, "upload")["batch_no"]
    out = []
    for s in unbalanced.tolist():
        term = int(recs["terminal"][s])
        mine_rows = by_terminal[term]
        own_settles = mine_rows[kind[mine_rows] == K["SETTLE"]]
        prev = own_settles[own_settles < s]
        after = own_settles[own_settles > s]
        start, end = (int(prev[-1]) if len(prev) else -1), (int(after[0]) if len(after)
                                                              else len(recs))
        number = int(st["batch_no_next"][s]) - 1
        b = _Batch(date, term, _tid(ref, term), ref.terminal_acquirer[term], number)
        batch = mine_rows[(mine_rows > start) & (mine_rows < s)
                          & np.isin(kind[mine_rows], BATCH_KINDS)]
        upload = mine_rows[(mine_rows > s) & (mine_rows < end)
                           & (kind[mine_rows] == K["BATCH_UPLOAD"])]
        upload = upload[batch_no[upload] == number]
        theirs, count = _uploaded(recs, upload)
        out += _compare(b, ref, _switch_batch(recs, batch, ref), theirs, count)
    return out


def _medical(recs: np.ndarray, nos: np.ndarray, ref: Reference, date: dt.date,
             cutover: str) -> list[Exception_]:
    """The institutions' daily totals (3201) that differ from the switch's journal: the
    journal is what was settled, so an adjustment acknowledges them with 0 fen (the
    institution corrects its own books)."""
    differences = medical.totals_differences(recs, nos, ref, date, cutover=cutover)
    if not differences:
        return []
    index = {tid: i for i, tid in enumerate(ref.terminal_tid or [])}
    day = clearing.day_number(date)
    out = []
    for d in differences:
        seq = medical.COMPARED.index(d.fund)
        money = d.fund in ("pool", "personal", "cash")
        unit = " fen" if money else ""
        out.append(Exception_(
            id=exception_id(date, "MEDICAL_TOTALS", d.terminal, day, seq),
            date=date.isoformat(), kind="MEDICAL_TOTALS",
            detail=f"{d.institution}'s totals of {d.settle_date} ({d.terminal}, record "
                   f"{d.record_no}): {d.fund} {d.institution_value}{unit}, the switch's "
                   f"journal {d.switch_value}{unit}",
            terminal=d.terminal, terminal_idx=index.get(d.terminal, -1),
            acquirer=f"acquirer:{d.institution}", ref=day, seq=seq, card="", card_idx=-1,
            issuer="", switch_amount_minor=d.switch_value,
            terminal_amount_minor=d.institution_value, currency=CNY if money else 0,
            suggested_fen=0, suggested_direction="acquirer_owed"))
    return out


def _tid(ref: Reference, terminal: int) -> str:
    return ref.terminal_tid[terminal] if ref.terminal_tid else str(terminal)


def adjustments(recs: np.ndarray, nos: np.ndarray, ref: Reference,
                cutover: str = clearing.CUTOVER_DEFAULT) -> dict[tuple, Adjustment]:
    """Every adjustment journaled, by the (kind, terminal, reference, STAN) it resolved."""
    rows = np.flatnonzero(recs["kind"] == K["ADJUSTMENT"])
    a = view(recs, "adjustment")
    days = clearing.settlement_days(recs["ts_us"][rows], clearing.cutover_minutes(cutover))
    out = {}
    for r, day in zip(rows.tolist(), days.tolist(), strict=True):
        key = (clearing.EXCEPTION_NAME.get(int(a["exception"][r]), "?"),
               int(recs["terminal"][r]), int(a["ref"][r]), int(recs["seq"][r]))
        out[key] = Adjustment(
            record_no=int(nos[r]), amount_fen=int(recs["amount_fen"][r]),
            direction=("acquirer_owes" if a["direction"][r] == clearing.ADJUST_OWES
                       else "acquirer_owed"),
            operator=int(a["operator"][r]), date=clearing.day_date(day).isoformat())
    return out


REASONS = {
    "no_card": "names no card (a reversal advice of a request this switch no longer knew, "
               "or an original it never had)",
    "unknown_card": "names a card the registry does not have",
    "unknown_terminal": "names a terminal the registry does not have",
    "unknown_programme": "names a programme the registry does not have",
}


def _unattributed(recs: np.ndarray, nos: np.ndarray, ref: Reference, date: dt.date,
                  cutover: str) -> list[Exception_]:
    """The date's money records clearing cannot attribute: their unknown party's legs are
    held by the suspense party (positions.legs), and each is an exception an operator
    acknowledges. The id names the journal record, so it never changes."""
    rows = moving_rows(recs, date, cutover)
    masks = unattributed(recs, rows, ref)
    bad = np.zeros(len(rows), dtype=bool)
    for mask in masks.values():
        bad |= mask
    out = []
    picked = np.flatnonzero(bad)
    # in journal order, whatever the order the records were read in
    for i in picked[np.argsort(nos[rows[picked]], kind="stable")].tolist():
        r = int(rows[i])
        reason = next(name for name, mask in masks.items() if mask[i])
        term, card, no = int(recs["terminal"][r]), int(recs["card"][r]), int(nos[r])
        tid = (_tid(ref, term) if term < len(ref.terminal_acquirer)
               else "NONE" if term == NONE else f"T{term}")
        acquirer = (f"acquirer:{ref.terminal_acquirer[term]}"
                    if term < len(ref.terminal_acquirer)
                    else "" if term == NONE else clearing.SUSPENSE)   # NONE: a credit
        card_ok = card < len(ref.card_province)
        kind = KIND_BY_VALUE[int(recs["kind"][r])].name
        amount = int(recs["amount_fen"][r])
        out.append(Exception_(
            id=exception_id(date, "UNATTRIBUTED", tid, no, int(recs["seq"][r])),
            date=date.isoformat(), kind="UNATTRIBUTED", reason=reason,
            detail=f"journal record {no} ({kind} of {amount} fen, terminal {tid} STAN "
                   f"{int(recs['seq'][r])}) {REASONS[reason]}: what its party would owe or be "
                   f"owed is held by {clearing.SUSPENSE}",
            terminal=tid, terminal_idx=term, acquirer=acquirer, ref=no,
            seq=int(recs["seq"][r]), card="", card_idx=card if card_ok else -1,
            issuer=f"issuer:{int(ref.card_province[card])}" if card_ok else "",
            switch_amount_minor=amount, terminal_amount_minor=0, currency=CNY,
            suggested_fen=0, suggested_direction="acquirer_owed"))
    return out


def find(recs: np.ndarray, nos: np.ndarray, ref: Reference, date: dt.date, *,
         cutover: str = clearing.CUTOVER_DEFAULT) -> list[Exception_]:
    """The date's exceptions, each with the adjustment that resolved it, if one did."""
    recs = np.ascontiguousarray(recs)
    found = _batches(recs, ref, date, clearing.cutover_minutes(cutover))
    found += _medical(recs, nos, ref, date, cutover)
    found += _unattributed(recs, nos, ref, date, cutover)
    done = adjustments(recs, nos, ref, cutover)
    out = []
    for e in found:
        # an adjustment keeps the reference's low 32 bits (a record number may be wider)
        adj = done.get((e.kind, e.terminal_idx, e.ref & REF_MASK, e.seq))
        out.append(msgspec.structs.replace(e, status="resolved", adjustment=adj)
                   if adj is not None else e)
    return out
