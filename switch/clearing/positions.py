"""Net positions of one settlement date, from the committed journal (issue 16,
protocols/CLEARING.md).

Every approved record of a kind in ``protocols.clearing.LEGS`` moves money between parties
(the card's issuer, the terminal's acquirer, medical funds, programmes, the scheme's fees);
a party's position is what it is owed (credits) minus what it owes (debits). The whole day is
computed with numpy over the records, no Python per record: party ids come from per-card and
per-terminal lookup arrays, the legs of each kind are array operations, and the positions are
sums over the records sorted by party. The positions of a day always sum to zero, to the fen:
checked before anything is returned.
"""

from __future__ import annotations

import datetime as dt

import msgspec
import numpy as np

from onecard.core.state import KIND_CREDIT
from onecard.protocols import clearing
from onecard.protocols.codes import CODE_INDEX
from onecard.protocols.journal import KIND_BY_NAME, NONE
from onecard.protocols.journal_codec import view

APPROVED = CODE_INDEX["00"]
FEE_KINDS = frozenset(k for k, legs in clearing.LEGS.items()
                      if any(leg.role == "acquirer" and leg.sign > 0 for leg in legs)
                      or k in ("REVERSAL", "VOID", "MEDICAL_REFUND"))


class ClearingError(Exception):
    """The journal or the reference data cannot be cleared as they are (the message says
    which record or table)."""


class Position(msgspec.Struct, frozen=True):
    party: str              # role:key, e.g. "issuer:32", "acquirer:SHMETRO"
    role: str
    debit_fen: int          # what the party owes
    credit_fen: int         # what it is owed
    fee_fen: int            # fees within those (paid by an acquirer, received by the scheme)
    count: int              # records that moved its money
    net_fen: int            # credit - debit: > 0 it is to be paid


class Day(msgspec.Struct, frozen=True):
    date: str               # YYYY-MM-DD, the settlement date
    cutover: str            # HH:MM China time
    records: int            # records of the date that moved money
    positions: list[Position]


class Reference(msgspec.Struct, kw_only=True):
    """Who is behind each card, terminal, application and programme (from the data set)."""
    card_province: np.ndarray       # per card: issuing province code
    card_region: np.ndarray         # per card: insuring region code (its medical funds)
    terminal_acquirer: list[str]    # per terminal: merchant id or transit operator code
    app_codes: list[str]            # per catalogue application index
    programme_codes: list[str]      # per programme index
    card_pan: np.ndarray | None = None      # per card: its number (clearing files mask it)
    terminal_tid: list[str] | None = None   # per terminal: its id (clearing files)


class _Parties:
    """Party names and their ids, allocated as first met (sorted in the output)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.roles: list[str] = []
        self.index: dict[str, int] = {}

    def id(self, role: str, key: object) -> int:
        name = f"{role}:{key}"
        found = self.index.get(name)
        if found is None:
            found = self.index[name] = len(self.names)
            self.names.append(name)
            self.roles.append(role)
        return found

    def ids(self, role: str, keys) -> np.ndarray:
        """Party ids of an array of keys (one Python call per distinct key only)."""
        keys = np.asarray(keys)
        if len(keys) == 0:
            return np.zeros(0, dtype=np.int64)
        distinct, inverse = np.unique(keys, return_inverse=True)
        return np.array([self.id(role, k) for k in distinct.tolist()],
                        dtype=np.int64)[inverse]


def _fee_arrays(ref: Reference, fees: dict[str, clearing.Fee]) -> tuple[np.ndarray, np.ndarray]:
    bps = np.array([fees.get(code, clearing.Fee(0, 0)).bps for code in ref.app_codes] + [0],
                   dtype=np.int64)
    min_fen = np.array([fees.get(code, clearing.Fee(0, 0)).min_fen for code in ref.app_codes]
                       + [0], dtype=np.int64)
    return bps, min_fen


def _legs_of(recs: np.ndarray, kind: str, lookups: dict[str, np.ndarray],
             fees: tuple[np.ndarray, np.ndarray]) -> list:
    """(party ids, signed amounts, fees) of every leg of this kind's records, each array in
    the records' order."""
    medical = kind in ("MEDICAL", "MEDICAL_REFUND")
    amounts = {"amount": recs["amount_fen"].astype(np.int64)}
    if medical:
        m = view(recs, "medical")
        amounts["pool"] = m["pool_fen"].astype(np.int64)
        amounts["personal"] = m["personal_fen"].astype(np.int64)
        amounts["bill"] = amounts["amount"] + amounts["pool"] + amounts["personal"]
    card, terminal = recs["card"].astype(np.int64), recs["terminal"].astype(np.int64)
    out = []
    for leg in clearing.LEGS[kind]:
        if leg.role == "acquirer":
            ids = lookups["acquirer"][terminal]
        elif leg.role == "payer":
            programme = view(recs, "credit")["programme"].astype(np.int64)
            ids = np.where(programme > 0, lookups["programme"][np.maximum(programme - 1, 0)],
                           lookups["deposit"][card])
        else:
            ids = lookups[leg.role][card]
        amount = amounts[leg.amount]
        fee = np.zeros(len(recs), dtype=np.int64)
        if leg.role == "acquirer" and kind in FEE_KINDS:
            app = np.minimum(recs["app"].astype(np.int64), len(fees[0]) - 1)
            fee = clearing.fees_fen(amount, fees[0][app], fees[1][app])
            out.append((np.full(len(recs), lookups["scheme"], dtype=np.int64),
                        leg.sign * fee, fee))
        out.append((ids, leg.sign * amount - leg.sign * fee, fee))
    return out


def _lookups(ref: Reference, parties: _Parties) -> dict[str, np.ndarray]:
    scheme = parties.id("scheme", "onecard")
    return {
        "issuer": parties.ids("issuer", ref.card_province),
        "pool": parties.ids("pool", ref.card_region),
        "personal": parties.ids("personal", ref.card_region),
        "deposit": parties.ids("deposit", ref.card_province),
        "acquirer": parties.ids("acquirer", np.array(ref.terminal_acquirer, dtype=object)),
        "programme": (parties.ids("programme", np.array(ref.programme_codes, dtype=object))
                      if ref.programme_codes else np.zeros(1, dtype=np.int64)),
        "scheme": np.int64(scheme),
    }


def _check_references(recs: np.ndarray, nos: np.ndarray, ref: Reference) -> None:
    card, terminal = recs["card"], recs["terminal"]
    credit = recs["kind"] == KIND_CREDIT
    bad = (card == NONE) | (card >= len(ref.card_province))
    bad |= ~credit & ((terminal == NONE) | (terminal >= len(ref.terminal_acquirer)))
    if bad.any():
        no = int(nos[np.flatnonzero(bad)[0]])
        raise ClearingError(f"journal record {no} moves money but names no known card or "
                            f"terminal: {int(bad.sum())} such records")


class Legs(msgspec.Struct, kw_only=True):
    """Every leg of a settlement date: leg i moves ``signed[i]`` fen for party ``party[i]``
    (a name in ``names``), by the record ``records[row[i]]`` (journal number ``nos[row[i]]``),
    with ``fee[i]`` fen of fee in it. Legs of zero fen are left out."""
    records: np.ndarray              # the date's records that moved money (RECORD_DTYPE)
    nos: np.ndarray
    row: np.ndarray
    party: np.ndarray
    signed: np.ndarray
    fee: np.ndarray
    names: list[str]
    roles: list[str]


def legs(recs: np.ndarray, nos: np.ndarray, ref: Reference, date: dt.date, *,
         cutover: str = clearing.CUTOVER_DEFAULT,
         fees: dict[str, clearing.Fee] | None = None) -> Legs:
    """The settlement date's legs from journal records (any superset of the date's)."""
    cutover_min = clearing.cutover_minutes(cutover)
    day = clearing.settlement_days(recs["ts_us"], cutover_min) == clearing.day_number(date)
    moving = day & (recs["rc"] == APPROVED)
    kinds = {KIND_BY_NAME[k].value: k for k in clearing.LEGS}
    moving &= np.isin(recs["kind"], list(kinds))
    recs, nos = np.ascontiguousarray(recs[moving]), nos[moving]
    _check_references(recs, nos, ref)
    parties = _Parties()
    lookups = _lookups(ref, parties)
    fee_table = _fee_arrays(ref, clearing.FEES_DEFAULT if fees is None else fees)
    parts: list[tuple[np.ndarray, ...]] = []
    for value, kind in kinds.items():
        rows = np.flatnonzero(recs["kind"] == value)
        if len(rows):
            parts += [(rows, *leg) for leg in _legs_of(np.ascontiguousarray(recs[rows]), kind,
                                                        lookups, fee_table)]
    empty = np.zeros(0, dtype=np.int64)
    row, party, signed, fee = (np.concatenate([p[i] for p in parts]) if parts else empty
                               for i in range(4))
    kept = signed != 0
    return Legs(records=recs, nos=nos, row=row[kept], party=party[kept],
                signed=signed[kept].astype(np.int64), fee=fee[kept].astype(np.int64),
                names=parties.names, roles=parties.roles)


def positions(recs: np.ndarray, nos: np.ndarray, ref: Reference, date: dt.date, *,
              cutover: str = clearing.CUTOVER_DEFAULT,
              fees: dict[str, clearing.Fee] | None = None) -> Day:
    """The settlement date's positions from journal records (any superset of the date's)."""
    return summarise(legs(recs, nos, ref, date, cutover=cutover, fees=fees), date, cutover)


def summarise(day: Legs, date: dt.date, cutover: str) -> Day:
    """The positions of a date's legs."""
    return Day(date=date.isoformat(), cutover=cutover, records=len(day.records),
               positions=_sum(day))


def _sum(day: Legs) -> list[Position]:
    if not len(day.party):
        return []
    order = np.argsort(day.party, kind="stable")
    ids, signed, fee = day.party[order], day.signed[order], day.fee[order]
    party, start = np.unique(ids, return_index=True)
    credit = np.add.reduceat(np.maximum(signed, 0), start)
    debit = np.add.reduceat(np.maximum(-signed, 0), start)
    fees = np.add.reduceat(fee, start)
    counts = np.diff(np.append(start, len(ids)))
    if int(credit.sum()) != int(debit.sum()):
        raise ClearingError(f"positions do not net to zero: credits {int(credit.sum())} fen, "
                            f"debits {int(debit.sum())} fen")
    out = [Position(party=day.names[p], role=day.roles[p], debit_fen=int(d),
                    credit_fen=int(c), fee_fen=int(f), count=int(n), net_fen=int(c - d))
           for p, c, d, f, n in zip(party.tolist(), credit.tolist(), debit.tolist(),
                                    fees.tolist(), counts.tolist(), strict=True)]
    role_order = {r.name: i for i, r in enumerate(clearing.ROLES)}
    return sorted(out, key=lambda x: (role_order[x.role], x.party))
