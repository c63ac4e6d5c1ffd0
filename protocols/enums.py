"""The small enums that leave the process: stored in SQLite and checkpoints, sent on a wire,
answered by the admin API or typed at the CLI.

Each is declared here once, as a table of (value, core symbol, name, description). The
compiled core keeps its own copy as a Cython enum, because C needs compile-time constants:
``core/state.pyx`` (and ``core/crypto.pyx`` for the MAC algorithms) asserts at import that the
copy agrees with the table, so a disagreement stops the switch before it serves anything.
Everything else (the admin API's names, the CLI's choices, the reference data) derives from
the tables. Values are durable: append rows, never renumber.

Transaction kinds (``Kind``) are the journal's and live in ``protocols/journal.py``.
"""

from __future__ import annotations

from typing import Final, NamedTuple


class Member(NamedTuple):
    value: int
    symbol: str       # the compiled core's name for it (core/state.pxd, core/crypto.pxd)
    name: str         # as the admin API, the CLI and documents spell it
    doc: str = ""


class EnumTable:
    """One enum's rows and the lookups derived from them."""

    __slots__ = ("bound", "core_enum", "flags", "members", "name_of", "value_of")

    def __init__(self, core_enum: str, members: tuple[Member, ...], *, flags: bool = False,
                 bound: str = "", value_max: int = 0xFF) -> None:
        self.core_enum = core_enum    # the cpdef enum in core/state.pxd ("" for none)
        self.members = members
        self.flags = flags            # values are bits of one mask
        self.bound = bound            # a core symbol that must be one past the largest value
        self.name_of: Final[dict[int, str]] = {m.value: m.name for m in members}
        self.value_of: Final[dict[str, int]] = {m.name: m.value for m in members}
        symbols = {m.symbol for m in members}
        assert len(self.name_of) == len(self.value_of) == len(symbols) == len(members), members
        # The field that stores them: a uint8_t of a record unless the table says otherwise.
        assert all(0 <= m.value <= value_max for m in members), members
        assert not flags or all(m.value > 0 and m.value & (m.value - 1) == 0
                                for m in members), members            # one bit each

    def symbols(self) -> dict[str, int]:
        """What the compiled enum must hold: every row's symbol, and the bound if any."""
        out = {m.symbol: m.value for m in self.members}
        if self.bound:
            out[self.bound] = max(self.name_of) + 1
        return out

    def names(self, mask: int) -> list[str]:
        """The names of the bits set in ``mask``, in table order (flag tables)."""
        assert self.flags, self.core_enum
        return [m.name for m in self.members if mask & m.value]

    def mask(self, *names: str) -> int:
        assert self.flags, self.core_enum
        out = 0
        for name in names:
            out |= self.value_of[name]
        return out


PROTO: Final = EnumTable("Proto", (
    Member(0, "PROTO_ISO8583", "iso8583", "ISO 8583 with TPDU and header (POS terminals)"),
    Member(1, "PROTO_NATIVE", "native", "MessagePack frames (gates, readers, kiosks, verifiers, "
           "venues, medical)"),
), bound="N_PROTOS")

TERMINAL_KIND: Final = EnumTable("TerminalKind", (
    Member(1, "TERM_POS", "pos", "point of sale"),
    Member(2, "TERM_METRO_GATE", "gate", "metro gate"),
    Member(3, "TERM_BUS_READER", "bus", "bus reader"),
    Member(4, "TERM_FERRY_READER", "ferry", "ferry reader"),
    Member(5, "TERM_VERIFIER", "verifier", "identity verification (hotels, counters)"),
    Member(6, "TERM_VENUE", "venue", "museum, library, scenic spot or sports venue gate"),
    Member(7, "TERM_MEDICAL", "medical", "hospital or pharmacy settlement terminal"),
    Member(8, "TERM_KIOSK", "kiosk", "top-up machine (圈存) at a station or service hall"),
))

DATA_SCOPE: Final = EnumTable("DataScope", (
    Member(0, "SCOPE_DEFAULT", "default", "masked name, age band, issuing region"),
    Member(1, "SCOPE_LODGING", "lodging", "full name and identity number (hotel registration)"),
))

CARD_STATUS: Final = EnumTable("CardStatus", (
    Member(0, "CARD_ACTIVE", "active", "usable"),
    Member(1, "CARD_LOST", "lost", "reported lost: refused 41, can be unfrozen"),
    Member(2, "CARD_FROZEN", "frozen", "refused 05, can be unfrozen"),
    Member(3, "CARD_CANCELLED", "cancelled", "refused 14 for good"),
    Member(4, "CARD_REPLACED", "replaced", "a new card took its place: refused 14 for good"),
))

FUNCTION: Final = EnumTable("Function", (
    Member(1, "FN_FINANCIAL", "financial", "bank account (payments, pensions, subsidies)"),
    Member(2, "FN_TRANSPORT", "transport", "transit rides"),
    Member(4, "FN_MEDICAL", "medical", "medical insurance settlement"),
    Member(8, "FN_ECARD", "electronic", "an electronic card (QR code), not a chip card"),
), flags=True)

# What an application may require of a card: its functions, not its form.
APPLICATION_FUNCTIONS: Final = FUNCTION.mask("financial", "transport", "medical")

HOLDER_FLAG: Final = EnumTable("HolderFlag", (
    Member(1, "HOLDER_DISABLED", "disabled", "disability concessions"),
    Member(2, "HOLDER_HMT", "hmt_resident", "Hong Kong, Macao or Taiwan resident"),
    Member(4, "HOLDER_DENIED", "deny_listed", "on the transit deny list (negative balance)"),
), flags=True)

OPERATOR_KIND: Final = EnumTable("OperatorKind", (
    Member(1, "OP_METRO", "metro", "fares by distance between stations"),
    Member(2, "OP_BUS", "bus", "flat fare"),
    Member(3, "OP_FERRY", "ferry", "flat fare"),
))

RING_FLAG: Final = EnumTable("RingFlag", (
    Member(1, "RING_APPROVED", "approved", "the original was approved"),
    Member(2, "RING_REVERSED", "reversed", "a reversal has been applied to this slot"),
    Member(4, "RING_NO_ORIGINAL", "no_original", "a reversal arrived for a STAN never seen"),
    Member(8, "RING_VOIDED", "voided", "the purchase in this slot was voided"),
), flags=True)

RULE_KIND: Final = EnumTable("RuleKind", (
    Member(0, "RULE_NONE", "none", "no rule"),
    Member(1, "RULE_ALL", "all", "everyone (within the rule's time window)"),
    Member(2, "RULE_AGE_GE", "age_ge", "holders of at least `param` years"),
    Member(3, "RULE_DISABLED", "disabled", "holders with a disability"),
    Member(4, "RULE_GROUP_RESIDENT", "group_resident",
           "insured in region group `param` (1 YRD, 2 JJJ, 3 GBA)"),
    Member(5, "RULE_PROVINCE_RESIDENT", "province_resident", "insured in province index `param`"),
))

MAC_ALGORITHM: Final = EnumTable("", (
    Member(1, "MAC_X919", "x919", "ANSI X9.19 retail MAC, double-length 3DES key"),
    Member(2, "MAC_SM4", "sm4", "CBC-MAC with SM4 (GB/T 15852.1 algorithm 1, padding method 2)"),
))

# A deny-log entry (State.deny_log, kept in checkpoints as "deny_log"): flag bits above a card
# index; the deny-list version of an entry is its position + 1.
DENY_ENTRY: Final = EnumTable("DenyEntry", (
    Member(0x80000000, "DENY_REMOVED", "removed", "the card came off the list"),
    Member(0x40000000, "DENY_FOREIGN", "foreign", "another region's card (FOREIGN_DENY): the "
           "index is into the foreign_pan map"),
    Member(0x3FFFFFFF, "DENY_INDEX", "index", "the mask of the card's index"),
), value_max=0xFFFFFFFF)

# The tables core/state.pyx checks its cpdef enums against.
STATE_TABLES: Final[tuple[EnumTable, ...]] = (
    PROTO, TERMINAL_KIND, DATA_SCOPE, CARD_STATUS, FUNCTION, HOLDER_FLAG, OPERATOR_KIND,
    RING_FLAG, RULE_KIND, DENY_ENTRY)
