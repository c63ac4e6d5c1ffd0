"""The journal record format, declared once: every record kind, every field, its type and unit.

A journal record is a fixed 80-byte after-image of one decision (SPEC §5): the unit of
durability, of recovery and of everything that reads the journal later (replication, regional
forwarding, clearing, reports). This table is the only place a field's name, type, unit or
position is written. From it come:

- ``core/records.pxd`` and ``core/records.pyx`` (``protocols/journal_render.py``, run by
  ``setup.py`` on every build): a C struct per layout and the ``JRec`` union the core writes
  and reads by name, and the offsets the C compiler gave them, checked against this table
  when ``onecard.core.journal`` is imported;
- the numpy dtypes and the typed reader of ``protocols/journal_codec.py``;
- ``protocols/JOURNAL.md`` (rendered by ``python -m onecard.protocols.journal_render`` and
  committed; a test fails when it is stale). The structs are built, not committed.

Layout: a 44-byte head every record has, then the fields of the record's layout, each at its
natural alignment. Versions 2 and 3 are this layout; version 1 (before this table) kept
kind-specific values in six untyped fields ``a``..``f`` with several values packed into one by
shifts: each field below names where version 1 kept it, and ``journal_codec.upgrade`` reads
version-1 records through that. Version 3 differs from 2 in one field: CARD_ADMIN's ``pan`` is
enciphered (no card number is on disk in clear); the store migration to schema 4 re-enciphers
the rows written in versions 1 and 2.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from onecard.protocols.enums import RING_FLAG

FORMAT: Final = 3                       # the version this build writes
RECORD_BYTES: Final = 80
NONE: Final = 0xFFFFFFFF                # a u32 index that names nothing

# type -> (bytes, alignment, C type, numpy type)
TYPES: Final[dict[str, tuple[int, int, str, str]]] = {
    "i64": (8, 8, "int64_t", "<i8"),
    "u64": (8, 8, "uint64_t", "<u8"),
    "i32": (4, 4, "int32_t", "<i4"),
    "u32": (4, 4, "uint32_t", "<u4"),
    "u16": (2, 2, "uint16_t", "<u2"),
    "u8": (1, 1, "uint8_t", "u1"),
    "key16": (16, 1, "uint8_t", "u1"),  # 16 bytes, C uint8_t[16]
}


class Field(NamedTuple):
    name: str
    type: str
    unit: str
    doc: str
    # version 1: "field" or "field:shift:bits" ("a:32:16" = bits 32..47 of a); "-" for a layout
    # version 1 did not have
    v1: str = ""


class Kind(NamedTuple):
    value: int
    name: str
    layout: str | None  # None: not a journal record (nothing in the state changes)
    doc: str


HEAD: Final[tuple[Field, ...]] = (
    Field("ts_us", "i64", "µs since 1970-01-01 UTC", "server time of the decision", "ts_us"),
    Field("amount_fen", "i64", "fen", "money this record moves, >= 0 (the kind says which way)",
          "amount_fen"),
    Field("balance_fen_after", "i64", "fen",
          "the account's financial balance after this record", "balance_fen"),
    Field("terminal", "u32", "index", "terminal position, NONE for an operator's change",
          "terminal"),
    Field("seq", "u32", "", "the request's STAN (ISO 8583) or sequence number (native)", "seq"),
    Field("card", "u32", "index", "card position, NONE when no card is known", "card"),
    Field("account", "u32", "index", "account position, NONE when nothing is restored",
          "account"),
    Field("kind", "u8", "Kind", "what the record is (KINDS)", "kind"),
    Field("app", "u8", "index", "catalogue application of the terminal", "app"),
    Field("rc", "u8", "index", "response code, an index into protocols.codes.CODES", "rc"),
    Field("flags", "u8", "FLAGS", "flags of the terminal's ring slot after this record, and "
          "deny-list changes", "flags"),
)

LAYOUTS: Final[dict[str, tuple[Field, ...]]] = {
    "head": (),
    "payment": (
        Field("app_spent_fen_after", "i32", "fen",
              "spent today on this application after this record", "c"),
        Field("amount_asked_minor", "i64", "minor units of currency",
              "the amount as the terminal asked it", "b:0:48"),
        Field("currency", "u16", "ISO 4217 numeric", "currency of amount_asked_minor", "b:48:16"),
        Field("daily_day", "u16", "days since 2000-01-01 (China time)",
              "the day daily_spent_fen_after counts", "a:32:16"),
        Field("daily_spent_fen_after", "i32", "fen", "spent today after this record", "a:0:32"),
        Field("orig_seq", "u32", "",
              "a void and its reversal: the voided purchase's STAN", "e"),
    ),
    "tap": (
        Field("station_id", "u32", "", "station the gate reported (0 on buses and ferries)",
              "b:8:32"),
        Field("trip_started_s_after", "u32", "s since 1970-01-01 UTC",
              "tap-in time of the card's open metro trip after this record, 0 none", "a:0:32"),
        Field("last_ride_s_after", "u32", "s since 1970-01-01 UTC",
              "when the account's last ride began, for transfer discounts", "c"),
        Field("trip_station_after", "u16", "index + 1",
              "station of the open metro trip after this record, 0 none", "a:32:16"),
        Field("last_ride_region_after", "u16", "index", "region of the last ride", "e:0:16"),
        Field("direction", "u8", "", "0 tap in (or a flat fare), 1 tap out", "b:0:8"),
        Field("transfer_discount_fen", "u16", "fen", "the transfer discount this ride got "
              "(0 none, and in records written before the field): its undiscounted fare is "
              "amount_fen + this; clearing apportions the journey by it", "-"),
    ),
    "verify": (
        Field("age_band", "u8", "", "0 <18, 1 18-59, 2 60-64, 3 65-69, 4 70-79, 5 80+", "c:0:8"),
        Field("scope", "u8", "DataScope", "what the terminal was allowed to see", "c:8:8"),
    ),
    "topup": (
        Field("amount_asked_fen", "i64", "fen", "cash paid in, as asked", "b"),
    ),
    "signon": (
        Field("mac_alg", "u8", "", "MAC algorithm of the new key (1 X9.19, 2 SM4)", "c:0:8"),
        Field("mac_key_wrapped", "key16", "",
              "the new working MAC key, encrypted under the terminal master key", "a+b"),
        Field("session_day", "u16", "days since 2000-01-01 (China time)",
              "the settlement date the terminal's session and batch belong to (0: not "
              "recorded, a record written before the field existed)", "-"),
    ),
    "settle": (
        Field("batch_no_next", "u32", "", "the terminal's next batch number", "a:0:32"),
        Field("debit_fen", "i64", "fen", "the switch's debit total of the batch", "amount_fen"),
        Field("credit_fen", "i64", "fen", "the switch's credit total of the batch", "b"),
        Field("debit_count", "u32", "", "debits in the batch", "c"),
        Field("credit_count", "u32", "", "credits in the batch", "e"),
        Field("result", "u8", "", "1 the terminal's totals agreed, 2 they did not", "d:0:8"),
    ),
    "medical": (
        Field("orig_seq", "u32", "", "a refund: the refunded settlement's sequence", "f"),
        Field("bill_fen", "i32", "fen", "the bill", "d:0:32"),
        Field("deductible_fen", "i32", "fen", "part of the bill under the deductible",
              "d:32:32"),
        Field("pool_fen", "i32", "fen", "the pooled fund's share", "c"),
        Field("personal_fen", "i32", "fen", "the personal medical account's share", "a:0:32"),
        Field("medical_fen_after", "i32", "fen", "the personal medical account after", "a:32:32"),
        Field("deductible_used_fen_after", "i32", "fen", "deductible used in `year` after",
              "b:0:32"),
        Field("pool_paid_fen_after", "i32", "fen", "paid by the pool in `year` after", "b:32:32"),
        Field("year", "u16", "", "the calendar year (China time) of the annual totals",
              "e:0:16"),
    ),
    "venue": (
        Field("entitlement", "u8", "", "the policy rule that set the price, 1-based, 0 none",
              "c:0:8"),
        Field("base_fen", "i64", "fen", "the venue's full price", "d"),
    ),
    "credit": (
        Field("operator", "u32", "index", "operator who made the change (0 the switch)", "b:0:32"),
        Field("programme", "u32", "index + 1", "disbursement programme, 0 for a top-up",
              "a:32:32"),
        Field("period", "u32", "YYYYMM", "the programme's period, 0 for a top-up", "a:0:32"),
    ),
    "forwarded": (
        # The acquirer's side of a request decided by another region's switch (the card's
        # issuer) or stood in for: what clearing needs of it, and the terminal's batch totals.
        Field("issuer_record_no", "u64", "", "the issuer's journal record, when "
              "issuer_recorded (journals are numbered from 0); origin STAND_IN: the card "
              "number, enciphered as card_admin.pan is (card and account NONE32)", "-"),
        Field("amount_asked_minor", "i64", "minor units of currency",
              "the amount as the terminal asked it", "-"),
        Field("pool_fen", "i32", "fen", "medical: the pooled fund's share; origin STAND_IN: "
              "a tap's direction", "-"),
        Field("orig_seq", "u32", "", "a void or refund: the original's STAN or sequence; "
              "origin STAND_IN: a tap's station", "-"),
        Field("currency", "u16", "ISO 4217 numeric", "currency of amount_asked_minor", "-"),
        Field("orig_kind", "u8", "Kind", "the request's kind (PURCHASE, TAP, VERIFY, ...)", "-"),
        Field("issuer_province", "u8", "province code", "the card's issuing province, from its "
              "number (two digits, 11..82)", "-"),
        Field("origin", "u8", "FORWARD_ORIGINS", "who decided: 1 the issuer, 2 this switch "
              "standing in, 3 nobody (the issuer did not answer: 91)", "-"),
        Field("repeated", "u8", "", "1 when this switch had already recorded the issuer's "
              "record (a retransmission): clearing and batch totals count it once", "-"),
        Field("issuer_recorded", "u8", "", "1 when issuer_record_no names a record of the "
              "issuer's journal (0: stood in, unavailable, or refused before any record)", "-"),
    ),
    "foreign_deny": (
        # Another region's card onto or off this switch's transit deny list, as its issuer
        # published it (switch/region/blocks.py): the gates here learn it in their deny-list
        # sync. Journaled so that replay gives every deny-list version the same change.
        Field("pan", "u64", "enciphered", "the card number, enciphered as card_admin.pan is "
              "(card and account NONE32)", "-"),
        Field("issuer_province", "u8", "province code", "the card's issuing province, from its "
              "number", "-"),
        Field("listed", "u8", "", "1 onto the deny list, 0 off it", "-"),
    ),
    "upload": (
        # One message of a POS batch upload (0320) after a 0500 answered "not balanced":
        # a transaction as the terminal has it, or the end of the upload. Moves no money and
        # changes no state; clearing's reconciliation compares these with the terminal's
        # batch in the journal (switch/clearing/reconcile.py).
        Field("amount_asked_minor", "i64", "minor units of currency",
              "the transaction's amount as the terminal uploaded it (0 for the end)", "-"),
        Field("pan_masked", "u64", "", "the uploaded card number's first six digits times "
              "10^4 plus its last four (never the whole number: head.card names the card "
              "when the switch knows it)", "-"),
        Field("batch_no", "u32", "", "the batch uploaded (the unbalanced 0500's)", "-"),
        Field("count", "u32", "", "the end: transactions the terminal says it uploaded", "-"),
        Field("currency", "u16", "ISO 4217 numeric", "currency of amount_asked_minor", "-"),
        Field("orig_kind", "u8", "Kind", "PURCHASE or VOID; 0 for the end of the upload", "-"),
        Field("pan_len", "u8", "digits", "length of the uploaded card number", "-"),
    ),
    "adjustment": (
        # 差错调整: an operator with the finance role resolves a clearing exception
        # (switch/clearing/exceptions.py) by moving money between the card's issuer and the
        # terminal's acquirer. Head: terminal and seq of the exception, card (the issuer),
        # account NONE (no cardholder balance changes: the issuer settles with its holder).
        Field("operator", "u32", "index", "operator who made the adjustment", "-"),
        Field("ref", "u32", "", "the exception's reference: the batch number, or the "
              "settlement date (days since 2000-01-01) of a medical institution's totals", "-"),
        Field("exception", "u8", "EXCEPTIONS", "the kind of exception resolved "
              "(protocols/clearing.py)", "-"),
        Field("direction", "u8", "", "1 the acquirer is owed amount_fen by the issuer, 2 it "
              "owes it", "-"),
    ),
    "card_admin": (
        Field("operator", "u32", "index", "operator who made the change", "c"),
        Field("pan", "u64", "enciphered", "the card number, enciphered: 3DES (double-length "
              "journal key derived from the data set's data key) of the number XOR "
              "(card << 32 | account), as a little-endian block; in clear in formats 1 and 2",
              "a"),
        Field("region", "u16", "index", "issuing region after", "b:0:16"),
        Field("expiry_yymm", "u16", "YYMM", "expiry after", "b:16:16"),
        Field("status", "u8", "CardStatus", "status after", "b:32:8"),
        Field("functions", "u8", "Function bits", "functions loaded after", "b:40:8"),
        Field("action", "u8", "CARD_ADMIN_ACTIONS", "what was done", "e:0:8"),
    ),
    "medical_totals": (
        # A medical institution's own totals of a settlement date (3201-style, native
        # MedicalTotals): kept as sent, compared with the switch's records of the date by
        # clearing (switch/clearing/medical.py totals_differences). Amounts are net of
        # refunds, so they may be below zero; the bill is not kept: it is the sum of the
        # three shares (the switch refuses totals where it is not), and 80 bytes hold no more.
        Field("settle_day", "u16", "days since 2000-01-01 (China time)",
              "the settlement date the totals are of", "-"),
        Field("pool_fen", "i64", "fen", "the pooled fund's share, net of refunds", "-"),
        Field("personal_fen", "i64", "fen", "the personal medical accounts' share, net of "
              "refunds", "-"),
        Field("cash_fen", "i64", "fen", "the cardholders' cash share, net of refunds", "-"),
        Field("settlements", "u32", "", "settlements the institution counted", "-"),
        Field("refunds", "u32", "", "refunds the institution counted", "-"),
    ),
}

# Every transaction kind: the metrics "type", the terminals' permission bits, the journal's
# record kind. The numbers are durable (journal, permissions): append, never renumber.
KINDS: Final[tuple[Kind, ...]] = (
    Kind(0, "NONE", None, "an empty ring slot"),
    Kind(1, "SIGNON", "signon", "a terminal signs on: a new working MAC key"),
    Kind(2, "ECHO", None, "ISO 8583 0820 echo"),
    Kind(3, "PURCHASE", "payment", "a purchase (amount_fen charged)"),
    Kind(4, "BALANCE", "head", "a balance inquiry"),
    Kind(5, "REVERSAL", "payment", "a purchase reversed (amount_fen credited back)"),
    Kind(6, "TAP", "tap", "a transit tap (amount_fen the fare)"),
    Kind(7, "VERIFY", "verify", "identity verification"),
    Kind(8, "HEARTBEAT", None, "native heartbeat"),
    Kind(9, "FORMAT", None, "a request that could not be decoded"),
    Kind(10, "OTHER", None, "decoded, but not a transaction onecard offers"),
    Kind(11, "VOID", "payment", "撤销: a same-day purchase undone (amount_fen credited back)"),
    Kind(12, "SETTLE", "settle", "0500 batch settlement (moves no money)"),
    Kind(13, "OFFLINE_TAP", "tap", "a tap recorded offline by a gate, uploaded later"),
    Kind(14, "DENY_SYNC", None, "a gate fetching deny-list changes"),
    Kind(15, "MEDICAL", "medical", "medical settlement (amount_fen the cash share)"),
    Kind(16, "MEDICAL_REFUND", "medical", "a medical settlement refunded (cash share back)"),
    Kind(17, "VENUE", "venue", "venue entry (amount_fen the fee)"),
    Kind(18, "CREDIT", "credit", "an operator's top-up or a disbursement (amount_fen credited)"),
    Kind(19, "CARD_ADMIN", "card_admin", "a card issued or changed by an operator"),
    Kind(20, "VOID_REVERSAL", "payment",
         "a void reversed: the purchase stands again (amount_fen debited again)"),
    Kind(21, "TOPUP", "topup", "cash paid in at a kiosk, 圈存 (amount_fen credited)"),
    Kind(22, "FORWARDED", "forwarded", "the acquirer's record of a request for another region's "
         "card: decided there, stood in for, or declined 91 (amount_fen charged by the issuer)"),
    Kind(23, "FOREIGN_DENY", "foreign_deny", "another region's card onto or off this "
         "switch's transit deny list, as its issuer published it"),
    Kind(24, "BATCH_UPLOAD", "upload", "0320: a transaction of a POS batch the switch found "
         "unbalanced, as the terminal uploads it, or the upload's end (moves no money)"),
    Kind(25, "ADJUSTMENT", "adjustment", "差错调整: an operator resolves a clearing "
         "exception, amount_fen between the card's issuer and the terminal's acquirer"),
    Kind(26, "MEDICAL_TOTALS", "medical_totals", "a medical institution's totals of a "
         "settlement date, as it sent them (moves no money; clearing compares them)"),
)

# Bits of the head's `flags`: the terminal ring slot's flags after the record (their table is
# protocols/enums.py RING_FLAG), and the deny-list changes the record makes.
FLAGS: Final[tuple[tuple[str, int, str], ...]] = (
    *((m.symbol.removeprefix("RING_"), m.value, m.doc) for m in RING_FLAG.members),
    ("STAND_IN", 0x20, "the issuer's posting of a stand-in advice: another region's switch "
     "approved this tap or venue entry while this switch did not answer (not in the ring: "
     "idempotent by the terminal's stand-in watermark, core/forward.pyx)"),
    ("DENY_SET", 0x40, "the account goes onto the transit deny list"),
    ("DENY_CLEAR", 0x80, "the account comes off it"),
)
RING_FLAGS_MASK: Final = 0x3F           # the flags a ring slot keeps

CARD_ADMIN_ACTIONS: Final[tuple[tuple[str, int, str], ...]] = (
    ("NEW", 1, "a card issued (a replacement or an electronic card)"),
    ("CHANGE", 2, "status, functions, expiry or region changed"),
)

# Version 1: where its fields were (offset, numpy type).
V1_FIELDS: Final[dict[str, tuple[int, str]]] = {
    "ts_us": (0, "<i8"), "amount_fen": (8, "<i8"), "balance_fen": (16, "<i8"),
    "a": (24, "<u8"), "b": (32, "<u8"), "d": (40, "<u8"), "terminal": (48, "<u4"),
    "seq": (52, "<u4"), "card": (56, "<u4"), "account": (60, "<u4"), "c": (64, "<u4"),
    "e": (68, "<u4"), "kind": (72, "u1"), "app": (73, "u1"), "rc": (74, "u1"),
    "flags": (75, "u1"), "f": (76, "<u4"),
}


def _align(offset: int, step: int) -> int:
    return (offset + step - 1) // step * step


def place(fields: tuple[Field, ...], start: int = 0) -> list[tuple[Field, int]]:
    """Each field with its offset at natural alignment from ``start``, as a C compiler lays
    out a struct of them."""
    out, offset = [], start
    for f in fields:
        size, step = TYPES[f.type][:2]
        offset = _align(offset, step)
        out.append((f, offset))
        offset += size
    return out


HEAD_BYTES: Final = sum(TYPES[f.type][0] for f in HEAD)


def layout_fields(layout: str) -> list[tuple[Field, int]]:
    """Every field of a layout (head first) with its offset in the record."""
    return place(HEAD) + place(LAYOUTS[layout], HEAD_BYTES)


def layout_of(kind: int) -> str | None:
    return KIND_BY_VALUE[kind].layout


KIND_BY_VALUE: Final[dict[int, Kind]] = {k.value: k for k in KINDS}
KIND_BY_NAME: Final[dict[str, Kind]] = {k.name: k for k in KINDS}
FLAG: Final[dict[str, int]] = {name: bit for name, bit, _ in FLAGS}
CARD_ADMIN: Final[dict[str, int]] = {name: v for name, v, _ in CARD_ADMIN_ACTIONS}


def _check() -> None:
    """The table's own invariants, at import: a mistake here must not reach a build."""
    assert HEAD_BYTES == 44 and place(HEAD)[-1][1] == 43, "the head is 44 bytes, unpadded"
    assert [k.value for k in KINDS] == list(range(len(KINDS))), "kinds are numbered densely"
    names: set[str] = set()
    for layout, fields in LAYOUTS.items():
        placed = layout_fields(layout)
        end = placed[-1][1] + TYPES[placed[-1][0].type][0]
        assert end <= RECORD_BYTES, f"layout {layout} is {end} bytes"
        own = [f.name for f in fields]
        assert len(set(own)) == len(own), f"layout {layout} repeats a field"
        assert not set(own) & {f.name for f in HEAD}, f"layout {layout} shadows the head"
        for f in fields:
            assert f.type in TYPES and f.v1, (layout, f.name)
        names |= set(own)
    for k in KINDS:
        assert k.layout is None or k.layout in LAYOUTS, k
    assert all(bit & RING_FLAGS_MASK or name.startswith("DENY") for name, bit, _ in FLAGS)
    assert len({bit for _, bit, _ in FLAGS}) == len(FLAGS), "two flags share a bit"


_check()
