"""Net positions of one settlement date, from the committed journal (issue 16,
protocols/CLEARING.md).

Every approved record of a kind in ``protocols.clearing.LEGS`` moves money between parties
(the card's issuer, the terminal's acquirer, medical funds, programmes, the scheme's fees);
a party's position is what it is owed (credits) minus what it owes (debits). The whole day is
computed with numpy over the records, no Python per record: party ids come from per-card and
per-terminal lookup arrays, the legs of each kind are array operations into preallocated
arrays (only the fields used are gathered, never a copy of the records), and the positions
are exact integer sums per party (np.add.at). A transfer journey between two transit
operators adds a pair of legs between them (apportion.py). The positions of a day always sum
to zero, to the fen: checked before anything is returned.
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
from onecard.switch.clearing import apportion
from onecard.switch.errors import ClearingError

APPROVED = CODE_INDEX["00"]
MEDICAL_KINDS = ("MEDICAL", "MEDICAL_REFUND")


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
    terminal_province: np.ndarray | None = None  # per terminal: its province (medical)


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


def medical_amounts(recs: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Medical records' shares (``rows`` of ``recs``): the cash (``amount``), the pool's,
    the personal accounts', and the ``bill`` they make together."""
    m = view(recs, "medical")
    out = {"amount": recs["amount_fen"][rows].astype(np.int64),
           "pool": m["pool_fen"][rows].astype(np.int64),
           "personal": m["personal_fen"][rows].astype(np.int64)}
    out["bill"] = out["amount"] + out["pool"] + out["personal"]
    return out


def _fill_kind(recs: np.ndarray, rows: np.ndarray, kind: str, lookups: dict[str, np.ndarray],
               fees: tuple[np.ndarray, np.ndarray], out: Legs, at: int) -> int:
    """Write the legs of this kind's records (``rows`` of ``recs``) into ``out`` from leg
    ``at``; the next free leg. Fields are gathered one at a time: a copy of the records
    themselves would cost 80 bytes each."""
    amounts = (medical_amounts(recs, rows) if kind in MEDICAL_KINDS
               else {"amount": recs["amount_fen"][rows].astype(np.int64)})
    if kind == "ADJUSTMENT":
        owes = view(recs, "adjustment")["direction"][rows] == clearing.ADJUST_OWES
        amounts["amount"] = np.where(owes, -amounts["amount"], amounts["amount"])
    card = known(recs["card"][rows], len(lookups["issuer"]) - 1)
    n = len(rows)
    for leg in clearing.LEGS[kind]:
        if leg.role == "acquirer":
            ids = lookups["acquirer"][known(recs["terminal"][rows], len(lookups["acquirer"]) - 1)]
        elif leg.role == "payer":
            programme = view(recs, "credit")["programme"][rows].astype(np.int64)
            ids = np.where(programme > 0, lookups["programme"][
                known(np.maximum(programme - 1, 0), len(lookups["programme"]) - 1)],
                lookups["deposit"][card])
        else:
            ids = lookups[leg.role][card]
        amount = amounts[leg.amount]
        fee: int | np.ndarray = 0
        if leg.role == "acquirer" and kind in clearing.FEE_KINDS:
            app = np.minimum(recs["app"][rows].astype(np.int64), len(fees[0]) - 1)
            fee = clearing.fees_fen(amount, fees[0][app], fees[1][app])
            out.row[at:at + n], out.party[at:at + n] = rows, lookups["scheme"]
            out.signed[at:at + n], out.fee[at:at + n] = leg.sign * fee, fee
            at += n
        out.row[at:at + n], out.party[at:at + n] = rows, ids
        out.signed[at:at + n], out.fee[at:at + n] = leg.sign * (amount - fee), fee
        at += n
    return at


def _lookups(ref: Reference, parties: _Parties) -> dict[str, np.ndarray]:
    """Party ids per card, terminal and programme index, each array one longer than the
    registry: its last slot is the suspense party, where ``known`` sends an index the
    registry does not have (NONE, or a card or terminal issued elsewhere)."""
    scheme = parties.id("scheme", "onecard")
    suspense = np.array([parties.id(*clearing.SUSPENSE.split(":"))], dtype=np.int64)
    programmes = (parties.ids("programme", np.array(ref.programme_codes, dtype=object))
                  if ref.programme_codes else np.zeros(0, dtype=np.int64))
    return {
        "issuer": np.r_[parties.ids("issuer", ref.card_province), suspense],
        "pool": np.r_[parties.ids("pool", ref.card_region), suspense],
        "personal": np.r_[parties.ids("personal", ref.card_region), suspense],
        "deposit": np.r_[parties.ids("deposit", ref.card_province), suspense],
        "acquirer": np.r_[parties.ids("acquirer", np.array(ref.terminal_acquirer,
                                                           dtype=object)), suspense],
        "programme": np.r_[programmes, suspense],
        "scheme": np.int64(scheme),
    }


def known(index: np.ndarray, size: int) -> np.ndarray:
    """Indices into a registry of ``size`` entries, an unknown one (NONE or beyond it) made
    ``size``: the suspense slot of the lookups."""
    index = np.asarray(index).astype(np.int64)
    return np.where(index < size, index, size)


def unattributed(recs: np.ndarray, rows: np.ndarray, ref: Reference) -> dict[str, np.ndarray]:
    """Which of ``rows`` clearing cannot attribute, by reason (masks over ``rows``): no card,
    a card or terminal the registry does not have, a credit's unknown programme. Their
    legs go to the suspense party; exceptions.find lists them."""
    card, terminal = recs["card"][rows], recs["terminal"][rows]
    credit = recs["kind"][rows] == KIND_CREDIT
    programme = view(recs, "credit")["programme"][rows].astype(np.int64)
    return {
        "no_card": card == NONE,
        "unknown_card": (card != NONE) & (card >= len(ref.card_province)),
        "unknown_terminal": ~credit & (terminal >= len(ref.terminal_acquirer)),
        "unknown_programme": credit & (programme > len(ref.programme_codes)),
    }


def moving_rows(recs: np.ndarray, date: dt.date, cutover: str) -> np.ndarray:
    """The rows of the records of the date that move money: approved, of a kind with legs
    (an adjustment of 0 fen, an acknowledgement maybe naming no card, moves nothing)."""
    moving = (clearing.settlement_days(recs["ts_us"], clearing.cutover_minutes(cutover))
              == clearing.day_number(date))
    moving &= recs["rc"] == APPROVED
    moving &= np.isin(recs["kind"], [KIND_BY_NAME[k].value for k in clearing.LEGS])
    moving &= (recs["kind"] != KIND_BY_NAME["ADJUSTMENT"].value) | (recs["amount_fen"] != 0)
    return np.flatnonzero(moving)


def shown(signed: np.ndarray, fee: np.ndarray) -> np.ndarray:
    """The legs a file has a line for and a position counts: those that move money or carry
    a fee. A 1-fen purchase with a 1-fen fee leaves its acquirer 0 fen but 1 fen of fee: it
    is a line of the acquirer's file, as the fee is in its position (issue 28)."""
    return (signed != 0) | (fee != 0)


class Legs(msgspec.Struct, kw_only=True):
    """Every leg of a settlement date: leg i moves ``signed[i]`` fen for party ``party[i]``
    (a name in ``names``), by the record ``records[row[i]]`` (journal number ``nos[row[i]]``),
    with ``fee[i]`` fen of fee in it. A leg may be of zero fen (a medical bill without a pool
    share): sums and files leave those out. After every record's own legs come the transit
    apportionment's (apportion.py), two per journey, by the discounted record and with no
    fee: the first legs' operators ``-moved`` (one per journey, in ``journeys`` order), then
    the second legs' operators ``+moved``."""
    records: np.ndarray              # the records given (RECORD_DTYPE), not a copy
    nos: np.ndarray
    moving: int                      # records of the date that moved money
    row: np.ndarray
    party: np.ndarray
    signed: np.ndarray
    fee: np.ndarray
    names: list[str]
    roles: list[str]
    journeys: apportion.Journeys = apportion.Journeys(*(np.zeros(0, dtype=np.int64),) * 3)

    @property
    def plain(self) -> int:
        """Legs before the apportionment's: the records' own."""
        return len(self.signed) - 2 * len(self.journeys.second)


def legs(recs: np.ndarray, nos: np.ndarray, ref: Reference, date: dt.date, *,
         cutover: str = clearing.CUTOVER_DEFAULT,
         fees: dict[str, clearing.Fee] | None = None) -> Legs:
    """The settlement date's legs from journal records (any superset of the date's)."""
    recs = np.ascontiguousarray(recs)
    kinds = {KIND_BY_NAME[k].value: k for k in clearing.LEGS}
    rows = moving_rows(recs, date, cutover)
    parties = _Parties()
    lookups = _lookups(ref, parties)
    fee_table = _fee_arrays(ref, clearing.FEES_DEFAULT if fees is None else fees)
    of_kind = {kind: rows[recs["kind"][rows] == value] for value, kind in kinds.items()}
    journeys = _journeys(recs, nos, rows, lookups["acquirer"])
    total = sum(len(r) * (len(clearing.LEGS[k]) + (k in clearing.FEE_KINDS))
                for k, r in of_kind.items()) + 2 * len(journeys.second)
    out = Legs(records=recs, nos=nos, moving=len(rows), row=np.empty(total, dtype=np.int64),
               party=np.empty(total, dtype=np.int32), signed=np.empty(total, dtype=np.int64),
               fee=np.empty(total, dtype=np.int64), names=parties.names, roles=parties.roles,
               journeys=journeys)
    at = 0
    for kind, kind_rows in of_kind.items():
        if len(kind_rows):
            at = _fill_kind(recs, kind_rows, kind, lookups, fee_table, out, at)
    at = _fill_apportion(recs, journeys, lookups["acquirer"], out, at)
    assert at == total, (at, total)
    return out


def _journeys(recs: np.ndarray, nos: np.ndarray, rows: np.ndarray,
              acquirer: np.ndarray) -> apportion.Journeys:
    """The date's transfer journeys between two operators (one operator's own journey
    moves nothing). A leg at a terminal the registry does not have is the suspense party's
    (``acquirer``'s last slot), as its own record's legs are."""
    j = apportion.journeys(recs, nos, rows)
    terminal = recs["terminal"]
    last = len(acquirer) - 1
    return apportion.between(j, acquirer[known(terminal[j.first], last)]
                             != acquirer[known(terminal[j.second], last)])


def _fill_apportion(recs: np.ndarray, j: apportion.Journeys, acquirer: np.ndarray, out: Legs,
                    at: int) -> int:
    """The apportionment's pair of legs per journey, by its discounted record: no fee (the
    fees stay on what each leg charged)."""
    n = len(j.second)
    for rows, sign in ((j.first, -1), (j.second, +1)):
        out.row[at:at + n] = j.second
        out.party[at:at + n] = acquirer[known(recs["terminal"][rows], len(acquirer) - 1)]
        out.signed[at:at + n], out.fee[at:at + n] = sign * j.moved, 0
        at += n
    return at


def positions(recs: np.ndarray, nos: np.ndarray, ref: Reference, date: dt.date, *,
              cutover: str = clearing.CUTOVER_DEFAULT,
              fees: dict[str, clearing.Fee] | None = None) -> Day:
    """The settlement date's positions from journal records (any superset of the date's)."""
    return summarise(legs(recs, nos, ref, date, cutover=cutover, fees=fees), date, cutover)


def summarise(day: Legs, date: dt.date, cutover: str) -> Day:
    """The positions of a date's legs."""
    return Day(date=date.isoformat(), cutover=cutover, records=day.moving,
               positions=_sum(day))


def _sum(day: Legs) -> list[Position]:
    """Exact integer sums per party (np.add.at: no float, no sorted copy of the legs)."""
    n = len(day.names)
    net, credit, fees = (np.zeros(n, dtype=np.int64) for _ in range(3))
    np.add.at(net, day.party, day.signed)
    np.add.at(credit, day.party, np.maximum(day.signed, 0))
    np.add.at(fees, day.party, day.fee)
    counts = np.bincount(day.party[shown(day.signed, day.fee)], minlength=n)
    debit = credit - net
    if int(net.sum()) != 0:
        raise ClearingError(f"positions do not net to zero: credits {int(credit.sum())} fen, "
                            f"debits {int(debit.sum())} fen")
    out = [Position(party=day.names[p], role=day.roles[p], debit_fen=int(debit[p]),
                    credit_fen=int(credit[p]), fee_fen=int(fees[p]), count=int(counts[p]),
                    net_fen=int(net[p]))
           for p in np.flatnonzero(counts).tolist()]
    role_order = {r.name: i for i, r in enumerate(clearing.ROLES)}
    return sorted(out, key=lambda x: (role_order[x.role], x.party))
