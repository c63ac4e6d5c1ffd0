"""Native protocol schema, version 1 (SPEC §3.2): msgspec Structs, MessagePack, array_like.

This module is the schema (see ``protocols/NATIVE.md`` for the prose version). Terminals, the
load generator and the tests use these Structs with msgspec directly; the switch's compiled core
(``core/native_path.pyx``) reads and writes exactly the same bytes without creating a Python
object per message.

Wire layout
-----------
A frame is a 4-byte big-endian length followed by a MessagePack-encoded :class:`Frame`. The
frame's ``body`` is itself a MessagePack array of messages (one, or a batch), kept as raw bytes
so that the MAC covers exactly those bytes. Every request carries the terminal's sequence
number ``seq``; every reply echoes it. Amounts are integer fen, times are Unix seconds.
"""

from typing import Final, NamedTuple, get_args

import msgspec

VERSION: Final = 1
LENGTH_PREFIX_BYTES: Final = 4
MAC_BYTES: Final = 8


class Message(NamedTuple):
    tag: int          # the request's; its reply's is tag + REPLY_OFFSET
    symbol: str       # the compiled core's name for the tag (core/native_msg.pxd)
    request: str      # the Structs below
    reply: str


# The message tags, declared once: the Structs below take their tags from this table, and
# core/native_msg.pyx asserts at import that its compile-time copy agrees. Append only.
MESSAGES: Final[tuple[Message, ...]] = (
    Message(1, "TAG_SIGNON", "SignOn", "SignOnReply"),
    Message(2, "TAG_HEARTBEAT", "Heartbeat", "HeartbeatReply"),
    Message(3, "TAG_TAP", "Tap", "TapReply"),
    Message(4, "TAG_VERIFY", "Verify", "VerifyReply"),
    Message(5, "TAG_OFFLINE_TAP", "OfflineTap", "OfflineTapReply"),
    Message(6, "TAG_DENY_SYNC", "DenyListSync", "DenyListReply"),
    Message(7, "TAG_MEDICAL", "Medical", "MedicalReply"),
    Message(8, "TAG_MEDICAL_REFUND", "MedicalRefund", "MedicalRefundReply"),
    Message(9, "TAG_VENUE", "VenueEntry", "VenueReply"),
    Message(10, "TAG_TOPUP", "TopUp", "TopUpReply"),
    Message(11, "TAG_MEDICAL_TOTALS", "MedicalTotals", "MedicalTotalsReply"),
)
REPLY_OFFSET: Final = 100
TAG_ERROR: Final = 199            # ErrorReply, to any request (or a frame) not processed

# Struct name -> tag.
TAGS: Final[dict[str, int]] = {
    **{m.request: m.tag for m in MESSAGES},
    **{m.reply: m.tag + REPLY_OFFSET for m in MESSAGES},
    "ErrorReply": TAG_ERROR,
}
# What core/native_msg.pxd must hold (its length prefix is PREFIX).
CORE_CONSTANTS: Final[dict[str, int]] = {
    **{m.symbol: m.tag for m in MESSAGES},
    "REPLY_OFFSET": REPLY_OFFSET,
    "TAG_ERROR": TAG_ERROR,
    "PREFIX": LENGTH_PREFIX_BYTES,
}
assert len(TAGS) == 2 * len(MESSAGES) + 1 and len(set(TAGS.values())) == len(TAGS), TAGS
assert max(m.tag for m in MESSAGES) < REPLY_OFFSET     # a reply's tag never reads as a request's

# Directions of a transit tap.
TAP_IN: Final = 0
TAP_OUT: Final = 1

# Age bands returned by identity verification (never the birth date itself).
AGE_BANDS: Final[tuple[str, ...]] = ("under 18", "18-59", "60-64", "65-69", "70-79", "80+")


class Frame(msgspec.Struct, array_like=True, frozen=True):
    """Outer envelope of every frame, in both directions.

    ``mac`` is the 8-byte MAC over ``body`` with the terminal's working MAC key (ANSI X9.19 or
    SM4 MAC, per terminal); a frame whose body is a single :class:`SignOn` is MACed with the
    terminal master key instead, since no working key exists yet. Replies from a terminal that
    is not signed on carry an empty ``mac``.
    """

    version: int
    terminal: str
    body: bytes
    mac: bytes


# ---- requests -------------------------------------------------------------------------------


class SignOn(msgspec.Struct, array_like=True, tag=TAGS["SignOn"], frozen=True):
    """Ask for a new working MAC key."""

    seq: int


class Heartbeat(msgspec.Struct, array_like=True, tag=TAGS["Heartbeat"], frozen=True):
    seq: int


class Tap(msgspec.Struct, array_like=True, tag=TAGS["Tap"], frozen=True):
    """A transit tap. Metro gates send ``direction`` TAP_IN then TAP_OUT; bus and ferry readers
    send TAP_IN and are charged a flat fare. ``station`` is the station (or stop) id."""

    seq: int
    card: str
    station: int
    direction: int
    time_s: int


class Verify(msgspec.Struct, array_like=True, tag=TAGS["Verify"], frozen=True):
    """Identity verification of a card holder."""

    seq: int
    card: str


class OfflineTap(msgspec.Struct, array_like=True, tag=TAGS["OfflineTap"], frozen=True):
    """A tap a gate recorded while offline, uploaded later (a frame may carry thousands).
    Applied once per terminal and ``seq`` (upload in increasing ``seq`` order), never refused
    for lack of money: a balance may go below zero, which puts the card on the deny list."""

    seq: int
    card: str
    station: int
    direction: int
    time_s: int


class DenyListSync(msgspec.Struct, array_like=True, tag=TAGS["DenyListSync"], frozen=True):
    """Deny-list changes after ``since_version`` (0 for the whole list)."""

    seq: int
    since_version: int


class Medical(msgspec.Struct, array_like=True, tag=TAGS["Medical"], frozen=True):
    """Settle a medical bill (hospital or pharmacy terminals)."""

    seq: int
    card: str
    bill_fen: int


class MedicalRefund(msgspec.Struct, array_like=True, tag=TAGS["MedicalRefund"], frozen=True):
    """Refund a settlement made on this terminal (``original_seq``)."""

    seq: int
    card: str
    original_seq: int


class VenueEntry(msgspec.Struct, array_like=True, tag=TAGS["VenueEntry"], frozen=True):
    """Entry to a museum, library, scenic spot or sports venue."""

    seq: int
    card: str


class TopUp(msgspec.Struct, array_like=True, tag=TAGS["TopUp"], frozen=True):
    """Cash paid in at a kiosk (圈存) onto the card's account, in fen (at most the switch's
    ``limits.topup_fen_max``); takes a card off the deny list once its balance is back at 0."""

    seq: int
    card: str
    amount_fen: int


class MedicalTotals(msgspec.Struct, array_like=True, tag=TAGS["MedicalTotals"], frozen=True):
    """A medical institution's totals of one settlement date on this terminal (the national
    platform's 3201 daily reconciliation): ``settle_date`` YYYYMMDD (the switch's settlement
    date, cut-over included, not after its current one); the approved settlements and refunds
    it counted; the bill and its shares, net of refunds (a refund counts negative, so an
    amount may be below zero, but only when ``refunds`` > 0), with ``bill_fen`` = ``pool_fen``
    + ``personal_fen`` + ``cash_fen``. Journaled as sent and compared by clearing; a later
    MedicalTotals for the same date replaces it."""

    seq: int
    settle_date: int
    settlements: int
    refunds: int
    bill_fen: int
    pool_fen: int
    personal_fen: int
    cash_fen: int


Request = (SignOn | Heartbeat | Tap | Verify | OfflineTap | DenyListSync | Medical
           | MedicalRefund | VenueEntry | TopUp | MedicalTotals)


# ---- replies --------------------------------------------------------------------------------


class SignOnReply(msgspec.Struct, array_like=True, tag=TAGS["SignOnReply"], frozen=True):
    """``keys``: the new working MAC key encrypted under the terminal master key (16 bytes)
    followed by its 4-byte check value (the key encrypting a zero block)."""

    seq: int
    rc: str
    keys: bytes


class HeartbeatReply(msgspec.Struct, array_like=True, tag=TAGS["HeartbeatReply"], frozen=True):
    seq: int
    rc: str
    time_s: int


class TapReply(msgspec.Struct, array_like=True, tag=TAGS["TapReply"], frozen=True):
    """``fare_fen`` is what this tap charged (0 on tap-in); ``balance_fen`` the balance after."""

    seq: int
    rc: str
    fare_fen: int
    balance_fen: int


class VerifyReply(msgspec.Struct, array_like=True, tag=TAGS["VerifyReply"], frozen=True):
    """What the terminal's data scope allows. Default scope: the masked name (surname and one
    ``*`` per other character), an index into AGE_BANDS and the issuing region's code, and an
    empty ``id_number``. Lodging-registration terminals: the full name and identity number."""

    seq: int
    rc: str
    name: str
    age_band: int
    region: int = 0
    id_number: str = ""


class OfflineTapReply(msgspec.Struct, array_like=True, tag=TAGS["OfflineTapReply"], frozen=True):
    """``rc`` 94: this upload was applied before (nothing done again)."""

    seq: int
    rc: str
    fare_fen: int
    balance_fen: int


class DenyListReply(msgspec.Struct, array_like=True, tag=TAGS["DenyListReply"], frozen=True):
    """Cards added to and removed from the deny list up to ``version``; when ``version`` is
    below the switch's, ask again from it (at most 1,000 changes a reply)."""

    seq: int
    rc: str
    version: int
    added: list[str]
    removed: list[str]


class MedicalReply(msgspec.Struct, array_like=True, tag=TAGS["MedicalReply"], frozen=True):
    """The bill's split: pooled fund, personal medical account, cash (from the financial
    account); balances after. ``rc`` M1: treatment in another province without a filing
    (备案): the hospital settles in cash."""

    seq: int
    rc: str
    pool_fen: int
    personal_fen: int
    cash_fen: int
    balance_fen: int
    medical_fen: int


class MedicalRefundReply(msgspec.Struct, array_like=True, tag=TAGS["MedicalRefundReply"],
                         frozen=True):
    """What went back to the pool, the personal medical account and the financial account."""

    seq: int
    rc: str
    pool_fen: int
    personal_fen: int
    cash_fen: int
    balance_fen: int
    medical_fen: int


class VenueReply(msgspec.Struct, array_like=True, tag=TAGS["VenueReply"], frozen=True):
    """``fee_fen`` charged; ``entitlement`` the price rule that applied (1-based, 0 none)."""

    seq: int
    rc: str
    fee_fen: int
    balance_fen: int
    entitlement: int


class ErrorReply(msgspec.Struct, array_like=True, tag=TAGS["ErrorReply"], frozen=True):
    """A request (or a whole frame, with ``seq`` 0) that could not be processed."""

    seq: int
    rc: str
    message: str


class TopUpReply(msgspec.Struct, array_like=True, tag=TAGS["TopUpReply"], frozen=True):
    seq: int
    rc: str
    amount_fen: int
    balance_fen: int


class MedicalTotalsReply(msgspec.Struct, array_like=True, tag=TAGS["MedicalTotalsReply"],
                         frozen=True):
    """``rc`` 00: the totals are recorded. ``result`` 0: not compared here: the switch's own
    totals come from its journal in clearing (``onecard clearing medical``), where a
    difference becomes an exception; 1 (agree) and 2 (differ) are kept for a comparison in
    the reply. ``rc`` 12: ``settle_date`` is after the switch's current settlement date."""

    seq: int
    rc: str
    result: int


Reply = (SignOnReply | HeartbeatReply | TapReply | VerifyReply | OfflineTapReply
         | DenyListReply | MedicalReply | MedicalRefundReply | VenueReply | TopUpReply
         | MedicalTotalsReply | ErrorReply)

# Every Struct is in the table and a union, under its tag (msgspec needs them distinct).
assert {c.__name__: c.__struct_config__.tag for c in get_args(Request) + get_args(Reply)} == TAGS

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(list[Request])
_reply_decoder = msgspec.msgpack.Decoder(list[Reply])
_frame_decoder = msgspec.msgpack.Decoder(Frame)


def encode_body(messages: list) -> bytes:
    return _encoder.encode(messages)


def encode_frame(terminal: str, body: bytes, mac: bytes) -> bytes:
    """A complete frame, length prefix included."""
    payload = _encoder.encode(Frame(VERSION, terminal, body, mac))
    return len(payload).to_bytes(LENGTH_PREFIX_BYTES, "big") + payload


def decode_frame(payload: bytes) -> Frame:
    """Decode a frame's payload (without its length prefix)."""
    return _frame_decoder.decode(payload)


def decode_requests(body: bytes) -> list:
    return _request_decoder.decode(body)


def decode_replies(body: bytes) -> list:
    return _reply_decoder.decode(body)
