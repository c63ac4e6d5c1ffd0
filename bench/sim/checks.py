"""The invariants the simulator checks after every step, from the journal and the terminals'
view, independently of the code under test.

- money: every record's balance after = the account's balance before ± the money the record
  says it moves (its kind says which way), and the sum of all live balances (financial and
  medical) = the opening sum + the sum of every record's movement, to the fen;
- one effect per request: no two approved records of the same kind for one terminal and
  STAN/sequence (a retransmission is answered from the terminal's ring, never acted on again),
  and a retransmission that was approved the first time gets the same answer again;
- durability: every approval a terminal received names a record in the committed journal (the
  record number for ISO 8583, terminal + sequence for native), and every operator's change
  acknowledged is durable;
- replay: the live state equals the opening state with every record since replayed (checked
  every step), the newest checkpoint + the durable journal equals the opening state + the
  durable journal (at every checkpoint and every restart), and what a restart recovers is
  exactly the durable prefix of the journal (after a torn write too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onecard.core import ledger
from onecard.core.state import (
    KIND_CARD_ADMIN,
    KIND_CREDIT,
    KIND_MEDICAL,
    KIND_MEDICAL_REFUND,
    KIND_OFFLINE_TAP,
    KIND_PURCHASE,
    KIND_REVERSAL,
    KIND_SIGNON,
    KIND_TAP,
    KIND_TOPUP,
    KIND_VENUE,
    KIND_VOID,
    KIND_VOID_REVERSAL,
    State,
)
from onecard.protocols.codes import CODE_INDEX
from onecard.protocols.journal import NONE
from onecard.protocols.journal_codec import unpack, view

DEBITS = frozenset({KIND_PURCHASE, KIND_TAP, KIND_OFFLINE_TAP, KIND_MEDICAL, KIND_VENUE,
                    KIND_VOID_REVERSAL})
CREDITS = frozenset({KIND_REVERSAL, KIND_VOID, KIND_MEDICAL_REFUND, KIND_CREDIT, KIND_TOPUP})
APPROVED = CODE_INDEX["00"]
MAPS = ("daily_app", "medical_year", "filings")


class InvariantViolation(AssertionError):
    def __init__(self, seed: int, step: int, invariant: str, detail: str) -> None:
        super().__init__(f"seed {seed} step {step}: invariant '{invariant}' broken: {detail}")
        self.seed, self.step, self.invariant, self.detail = seed, step, invariant, detail


@dataclass
class Books:
    """What the journal says so far: balances per account, effects per request, and the
    records by number. Kept twice: for everything produced, and for the durable prefix."""
    balance_fen: dict[int, int] = field(default_factory=dict)
    medical_fen: dict[int, int] = field(default_factory=dict)
    moved_fen: int = 0                 # Σ credits − Σ debits, financial
    moved_medical_fen: int = 0
    effects: dict[tuple[int, int, int], int] = field(default_factory=dict)
    by_request: dict[tuple[int, int], int] = field(default_factory=dict)   # -> rc
    end_no: int = 0

    def copy(self) -> Books:
        return Books(dict(self.balance_fen), dict(self.medical_fen), self.moved_fen,
                     self.moved_medical_fen, dict(self.effects), dict(self.by_request),
                     self.end_no)


class BooksError(AssertionError):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(detail)
        self.invariant = invariant


def post(books: Books, opening: State, first_no: int, blob: bytes) -> None:
    """Enter records into the books, checking each record's money as it goes."""
    if first_no != books.end_no:
        raise BooksError("journal continuous", f"records from {first_no}, books end at "
                         f"{books.end_no}")
    recs = unpack(blob)
    medical = view(recs, "medical")
    accounts = opening.accounts
    for i in range(len(recs)):
        r = recs[i]
        no, kind, rc = first_no + i, int(r["kind"]), int(r["rc"])
        account, amount = int(r["account"]), int(r["amount_fen"])
        # An effect: an approval that touches an account. (A reversal whose original has
        # left the terminal's ring is acknowledged with a record naming no account.)
        if (rc == APPROVED and int(r["terminal"]) != NONE and kind != KIND_SIGNON
                and account != NONE):
            key = (int(r["terminal"]), int(r["seq"]), kind)
            if key in books.effects:
                raise BooksError("one effect per request",
                                 f"records {books.effects[key]} and {no} both approve "
                                 f"terminal {key[0]} seq {key[1]} kind {kind}")
            books.effects[key] = no
        if int(r["terminal"]) != NONE:
            books.by_request[(int(r["terminal"]), int(r["seq"]))] = rc
        if account == NONE or kind == KIND_CARD_ADMIN:
            continue
        sign = 0 if rc != APPROVED else (-1 if kind in DEBITS else 1 if kind in CREDITS else 0)
        before = books.balance_fen.get(account, int(accounts["balance_fen"][account]))
        after = int(r["balance_fen_after"])
        if after != before + sign * amount:
            raise BooksError("money conserved", f"record {no} (kind {kind}) takes account "
                             f"{account} from {before} to {after} fen, moving {sign * amount}")
        books.balance_fen[account] = after
        books.moved_fen += sign * amount
        if kind in (KIND_MEDICAL, KIND_MEDICAL_REFUND) and rc == APPROVED:
            m = medical[i]
            before = books.medical_fen.get(account, int(accounts["medical_fen"][account]))
            personal = int(m["personal_fen"]) * (-1 if kind == KIND_MEDICAL else 1)
            if int(m["medical_fen_after"]) != before + personal:
                raise BooksError("money conserved", f"record {no}: medical account {account} "
                                 f"from {before} to {int(m['medical_fen_after'])}, moving "
                                 f"{personal}")
            books.medical_fen[account] = int(m["medical_fen_after"])
            books.moved_medical_fen += personal
    books.end_no = first_no + len(recs)


def check_totals(books: Books, opening: State, live: State) -> None:
    """Σ live balances = Σ opening balances + Σ movements, financial and medical."""
    n = opening.n_accounts
    for name, moved in (("balance_fen", books.moved_fen),
                        ("medical_fen", books.moved_medical_fen)):
        want = int(opening.accounts[name][:n].sum()) + moved
        got = int(live.accounts[name][:live.n_accounts].sum())
        if got != want:
            raise BooksError("money conserved", f"Σ {name} is {got}, opening + journal "
                             f"says {want}")


def differences(a: State, b: State, *, deep: bool = False) -> list[str]:
    """Names of the mutable arrays and maps in which two states differ. The big arrays are
    compared in place; ``deep`` also compares the deny log (through a snapshot copy)."""
    out = []
    for name in ("cards", "accounts", "terminals", "ring"):
        x, y = getattr(a, name), getattr(b, name)
        if name == "cards":
            x, y = x[:a.n_cards], y[:b.n_cards]
        if x.shape != y.shape or not np.array_equal(x, y):
            out.append(name)
    for name in MAPS:
        x = np.sort(getattr(a, name).export(), order="key")
        y = np.sort(getattr(b, name).export(), order="key")
        if x.shape != y.shape or not np.array_equal(x, y):
            out.append(name)
    if a.deny_version != b.deny_version:
        out.append("deny_version")
    elif deep and not np.array_equal(a.snapshot()["deny_log"], b.snapshot()["deny_log"]):
        out.append("deny_log")
    return out


def replay(state: State, rows: list[tuple[int, bytes]], skip_before: int = 0) -> State:
    for first_no, blob in rows:
        ledger.apply_records(state, blob, first_no, skip_before)
    return state
