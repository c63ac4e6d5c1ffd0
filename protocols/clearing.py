"""Clearing's vocabulary, declared once (issue 16, protocols/CLEARING.md): the business day and
its cut-over, the parties money moves between, which parties each journal record kind moves
money between (its legs), and the fees.

Everything clearing computes comes from the committed journal and these tables: positions
are a pure function of the records of one settlement date.
"""

from __future__ import annotations

import datetime as dt
from typing import Final, NamedTuple

import numpy as np

CST: Final = dt.timezone(dt.timedelta(hours=8))          # the scheme's business time
DAY0: Final = dt.date(2000, 1, 1)                        # day numbers count from here
CUTOVER_DEFAULT: Final = "23:00"                         # 日切: later records are tomorrow's
SECONDS_PER_DAY: Final = 86_400
CST_OFFSET_S: Final = 8 * 3600
DAYS_1970_TO_2000: Final = (DAY0 - dt.date(1970, 1, 1)).days
BPS: Final = 10_000                                      # basis points in a whole


class Role(NamedTuple):
    name: str
    key: str            # what names one party of the role
    doc: str


# The kinds of party a position is kept for. A party is a role and a key: "issuer:32".
ROLES: Final[tuple[Role, ...]] = (
    Role("issuer", "province code", "the card's issuing province: its cardholders' accounts"),
    Role("acquirer", "merchant id or operator code", "the merchant behind the terminal, or "
         "the transit operator that runs it (metro, bus, ferry)"),
    Role("pool", "region code", "the pooled medical fund of the card's insuring region"),
    Role("personal", "region code", "the personal medical accounts of the card's insuring "
         "region"),
    Role("programme", "programme code", "a disbursement programme (pensions, subsidies)"),
    Role("deposit", "province code", "cash an operator took in at the issuer's counter and "
         "credited (a top-up with no programme)"),
    Role("scheme", "onecard", "the switch operator: the fees"),
    # Last: what the others cannot be named for. A record that names no card or terminal the
    # registry knows still moves its legs (so a day always clears and nets to zero); the
    # unknown party's legs are held here, and the record is an UNATTRIBUTED exception.
    Role("suspense", "onecard", "held for the party of a record clearing cannot attribute "
         "(no or unknown card, terminal or programme) until an operator resolves it"),
)
ROLE: Final[dict[str, int]] = {r.name: i for i, r in enumerate(ROLES)}
SUSPENSE: Final = "suspense:onecard"


class Leg(NamedTuple):
    role: str           # a ROLES name; "payer": the credit's programme, or deposit without one
    sign: int           # +1 the party is owed the amount (credit), -1 it owes it (debit)
    amount: str         # "amount" (amount_fen), "pool" (pool_fen), "personal" (personal_fen),
                        # "bill" (the three together: what the institution is owed)


_SALE: Final = (Leg("issuer", -1, "amount"), Leg("acquirer", +1, "amount"))
_UNDO: Final = (Leg("issuer", +1, "amount"), Leg("acquirer", -1, "amount"))
_CARE: Final = (Leg("issuer", -1, "amount"), Leg("pool", -1, "pool"),
                Leg("personal", -1, "personal"), Leg("acquirer", +1, "bill"))

# Which parties an approved record of each kind moves money between. A kind not here moves
# none (sign-on, balance inquiry, identity check, settlement, card changes, deny-list marks;
# FORWARDED: the acquirer region's copy of a movement its issuer journaled, netted between
# regions at the hub, not here). Each kind's legs sum to zero: checked below.
LEGS: Final[dict[str, tuple[Leg, ...]]] = {
    "PURCHASE": _SALE,
    "VOID_REVERSAL": _SALE,              # the voided purchase stands again
    "REVERSAL": _UNDO,                   # on its own date: an original of an earlier date
    "VOID": _UNDO,                       #   nets out across the two dates' positions
    "TAP": _SALE,
    "OFFLINE_TAP": _SALE,
    "VENUE": _SALE,
    "TOPUP": (Leg("acquirer", -1, "amount"), Leg("issuer", +1, "amount")),
    "CREDIT": (Leg("payer", -1, "amount"), Leg("issuer", +1, "amount")),
    "MEDICAL": _CARE,
    "MEDICAL_REFUND": tuple(Leg(leg.role, -leg.sign, leg.amount) for leg in _CARE),
    # 差错调整: a sale's legs with the amount signed by the record's direction (1: the
    # acquirer is owed it, 2: it owes it); no fee
    "ADJUSTMENT": _SALE,
}
ADJUST_OWED: Final = 1                   # adjustment.direction: the acquirer is owed
ADJUST_OWES: Final = 2                   #   the acquirer owes
DIRECTIONS: Final[dict[str, int]] = {"acquirer_owed": ADJUST_OWED, "acquirer_owes": ADJUST_OWES}


class ExceptionKind(NamedTuple):
    name: str
    value: int          # durable: ADJUSTMENT records name the exception they resolve by it
    doc: str


# What reconciliation finds (switch/clearing/exceptions.py): an operator with the finance
# role resolves each with an adjustment (ADJUSTMENT record). Append, never renumber.
EXCEPTIONS: Final[tuple[ExceptionKind, ...]] = (
    ExceptionKind("MISSING_AT_SWITCH", 1, "the terminal uploaded a transaction its batch in "
                  "the switch's journal does not have"),
    ExceptionKind("MISSING_AT_TERMINAL", 2, "the switch's batch has an approved transaction "
                  "the terminal did not upload"),
    ExceptionKind("AMOUNT_MISMATCH", 3, "both have the transaction, with different amounts "
                  "or currencies"),
    ExceptionKind("CARD_MISMATCH", 4, "both have the transaction, with different cards"),
    ExceptionKind("COUNT_MISMATCH", 5, "the upload's end counts other than the transactions "
                  "uploaded"),
    ExceptionKind("NOT_UPLOADED", 6, "a batch answered \"not balanced\" whose upload has "
                  "not ended (no 0320 with network code 202)"),
    ExceptionKind("MEDICAL_TOTALS", 7, "a medical institution's daily totals for a fund "
                  "differ from the switch's"),
    ExceptionKind("UNATTRIBUTED", 8, "an approved record that moves money names no card, "
                  "terminal or programme the registry knows: its unknown party's legs are "
                  "held by suspense:onecard"),
)
EXCEPTION: Final[dict[str, int]] = {e.name: e.value for e in EXCEPTIONS}
EXCEPTION_NAME: Final[dict[int, str]] = {e.value: e.name for e in EXCEPTIONS}


class Fee(NamedTuple):
    bps: int            # of the amount, in basis points
    min_fen: int        # at least this, on any amount above zero


# Fees by catalogue application, paid by the acquirer to the scheme on the amount it is owed
# (and given back by a void or reversal). Public services pay none unless configured.
FEES_DEFAULT: Final[dict[str, Fee]] = {"FIN-PAY": Fee(50, 1)}
# The kinds whose acquirer leg carries the fee: what an acquirer is paid, and what undoes it
# (a top-up's kiosk pays the cash in, and pays no fee on it).
FEE_KINDS: Final = frozenset({"PURCHASE", "VOID_REVERSAL", "TAP", "OFFLINE_TAP", "VENUE",
                              "MEDICAL", "REVERSAL", "VOID", "MEDICAL_REFUND"})
FEE_BPS_MAX: Final = 1_000               # 10%: a fee above is a configuration mistake
FEE_MIN_FEN_MAX: Final = 10_000


def _check() -> None:
    weights = {"amount": (1, 0, 0), "pool": (0, 1, 0), "personal": (0, 0, 1),
               "bill": (1, 1, 1)}
    for kind, legs in LEGS.items():
        total = np.zeros(3, dtype=np.int64)
        for leg in legs:
            assert leg.role in ROLE or leg.role == "payer", (kind, leg)
            assert leg.sign in (1, -1) and leg.amount in weights, (kind, leg)
            total += leg.sign * np.array(weights[leg.amount])
        assert not total.any(), f"{kind}'s legs do not sum to zero"
    assert len(EXCEPTION) == len(EXCEPTION_NAME) == len(EXCEPTIONS)
    assert "ADJUSTMENT" not in FEE_KINDS
    assert FEE_KINDS <= {k for k, legs in LEGS.items() if any(leg.role == "acquirer"
                                                                 for leg in legs)}


_check()


def cutover_minutes(text: str) -> int:
    """"HH:MM" (China time) as minutes after midnight; ValueError otherwise."""
    hh, sep, mm = text.partition(":")
    if not (sep and hh.isdigit() and mm.isdigit() and len(mm) == 2):
        raise ValueError(f"cut-over {text!r} is not HH:MM")
    minutes = int(hh) * 60 + int(mm)
    if not (0 <= int(hh) < 24 and 0 <= int(mm) < 60):
        raise ValueError(f"cut-over {text!r} is not a time of day")
    return minutes


def settlement_days(ts_us: np.ndarray, cutover_min: int) -> np.ndarray:
    """The settlement date (days since 2000-01-01) of records decided at ``ts_us``: the China
    date, or the next one from the cut-over on (23:00: 23:00:00 belongs to tomorrow)."""
    shift_s = (24 * 60 - cutover_min) % (24 * 60) * 60
    seconds = np.floor_divide(np.asarray(ts_us, dtype=np.int64), 1_000_000)
    return (seconds + CST_OFFSET_S + shift_s) // SECONDS_PER_DAY - DAYS_1970_TO_2000


def day_number(date: dt.date) -> int:
    return (date - DAY0).days


def day_date(day: int) -> dt.date:
    return DAY0 + dt.timedelta(days=int(day))


def fees_fen(amount_fen: np.ndarray, bps: np.ndarray, min_fen: np.ndarray) -> np.ndarray:
    """Each amount's fee: its rate, rounded half up to the fen, at least the minimum (none on
    a zero amount). Integer fen throughout."""
    amount = np.asarray(amount_fen, dtype=np.int64)
    fee = (amount * bps + BPS // 2) // BPS
    return np.where(amount > 0, np.maximum(fee, min_fen), 0)
