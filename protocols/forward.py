"""Forwarding between regional switches, declared once: the wire records of a forwarded batch,
the subjects they travel on, which requests are forwarded, and who decided a forwarded one.

A regional switch that receives a request for a card another region issues sends it to the
issuer's switch in a batch: one NATS request per destination per core batch, whose payload is
an array of REQUEST records; the answer's payload is an array of ANSWER records in the same
order. Both are little-endian C structs (``core/forward.pxd``), checked against these tables
when ``onecard.core.forward`` is imported. The protocol version travels in the NATS header
``Onecard-Forward``; a switch answers a version it does not speak with a NATS error header and
no payload, and the sender declines the batch with ``91``.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from onecard.protocols.journal import KIND_BY_NAME

VERSION: Final = 1
HEADER: Final = "Onecard-Forward"            # NATS header carrying VERSION
REGION_HEADER: Final = "Onecard-Region"      # NATS header naming the acquiring region
SUBJECT_PREFIX: Final = "onecard.auth."      # + issuer region name: forwarded batches
BATCH_MAX: Final = 4096                      # requests in one forwarded batch

# What the core's Txn is on the wire (core/authorise.pxd), preceded by the terminal id: the
# issuer knows every terminal (the registry is reference data in every region) by id, not
# by the acquirer's index.
TXN_FIELDS: Final = (
    ("pan", "<u8"), ("amount_fen", "<i8"), ("x", "<i8", (4,)), ("terminal", "<u4"),
    ("seq", "<u4"), ("station_id", "<u4"), ("time_s", "<u4"), ("proc_code", "<u4"),
    ("orig_seq", "<u4"), ("batch_no", "<u4"), ("currency", "<u2"), ("kind", "u1"),
    ("proto", "u1"), ("direction", "u1"), ("offline", "u1"),
)
REQUEST: Final = np.dtype([("tid", "<u8"), ("txn", np.dtype(list(TXN_FIELDS), align=True))],
                          align=True)
ANSWER: Final = np.dtype([
    ("amount_fen", "<i8"),        # charged or credited, fen
    ("balance_fen", "<i8"),       # the account's financial balance after
    ("x", "<i8", (4,)),           # medical: pool, personal, cash, medical account after
    ("record_no", "<u8"),         # the issuer's journal record (0 none)
    ("tid", "<u8"),               # echoed, to match the answer to its request
    ("seq", "<u4"),
    ("region_code", "<u4"),       # verification: the card's issuing region
    ("rc", "u1"),                 # index into protocols.codes.CODES
    ("duplicate", "u1"),          # answered from the issuer's ring
    ("age_band", "u1"),
    ("name_len", "u1"),
    ("id_len", "u1"),
    ("entitlement", "u1"),
    ("settle_result", "u1"),
    ("origin", "u1"),             # ORIGINS
    ("name", "u1", (64,)),        # verification: masked name (full for lodging terminals)
    ("id_number", "u1", (20,)),   # lodging terminals only
    ("flags", "u1"),              # the issuer's record's head flags (APPROVED, NO_ORIGINAL...)
    ("kind", "u1"),               # the issuer's record's kind (a reversal may be VOID_REVERSAL)
    ("recorded", "u1"),           # 1: record_no names a record (journals count from 0)
    ("undelivered", "u1"),        # acquirer only (the issuer sends 0): no issuer received it
], align=True)

# Who decided a forwarded request: the journal's FORWARDED records carry it (``origin``).
ORIGINS: Final = (
    (1, "ISSUER", "the card's issuing region decided it"),
    (2, "STAND_IN", "this switch stood in for an issuer that did not answer in time"),
    (3, "UNAVAILABLE", "the issuer did not answer in time and stand-in did not apply: 91"),
)
ORIGIN: Final = {name: value for value, name, _ in ORIGINS}

# Requests decided by the card's issuer. Sign-on, echo, heartbeat, settlement and deny-list
# sync concern the terminal and its acquirer only.
FORWARDED_KINDS: Final = tuple(KIND_BY_NAME[k].value for k in (
    "PURCHASE", "BALANCE", "REVERSAL", "VOID", "TAP", "OFFLINE_TAP", "VERIFY", "VENUE",
    "MEDICAL", "MEDICAL_REFUND", "TOPUP"))


# What the acquirer's link gives Router.install for a chunk NATS had no responder for (the
# issuer's subscription is gone: it never received the requests, so stand-in cannot
# duplicate a decision it made). None is a chunk whose fate is unknown (a timeout): 91.
UNDELIVERED: Final = "undelivered"

# An advice is a REQUEST record the acquirer sends on the advice stream; its ``txn.offline``
# says which. A reversal advice carries no card number (the issuer finds the original by
# terminal and STAN); a stand-in advice carries the card, the amount the acquirer approved
# (the most the issuer may post: docs/regions.md), the tap's station and
# direction, and ``time_s``, when the acquirer stood in.
ADVICE_REVERSAL: Final = 1
ADVICE_STAND_IN: Final = 2

# Requests an acquirer may approve for an issuer that does not answer (a gate must open or
# stay shut at once); everything else gets 91.
STAND_IN_KINDS: Final = tuple(KIND_BY_NAME[k].value for k in ("TAP", "VENUE"))
# The issuer publishes its limits in the routing bucket under STAND_IN_KEY + its region name,
# as JSON {"per_txn_fen": int, "per_day_fen": int} (0: no stand-in for its cards).
STAND_IN_KEY: Final = "standin."
STAND_IN_PER_TXN_FEN: Final = 1_000          # default published limits: ¥10 a tap or entry,
STAND_IN_PER_DAY_FEN: Final = 3_000          # ¥30 a card a day
STAND_IN_FEN_MAX: Final = 1_000_000          # limits above ¥10,000 are refused as a mistake


def province_of_pan(pan: int) -> int:
    """The issuing province code of a card number: its digits 4 and 5 ("621" + province + ...),
    0 for a number too short to have one."""
    digits = len(str(pan))
    return (pan // 10 ** (digits - 5)) % 100 if digits >= 6 else 0
