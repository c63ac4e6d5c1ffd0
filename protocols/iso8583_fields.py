"""ISO 8583:1987 field table, packed the way China's bank POS terminals pack it (SPEC §3.1).

This table is the single definition of the format: the compiled codec in ``core/isocodec.pyx``
loads it at import, and :func:`pyiso8583_spec` turns it into a specification for the independent
pyiso8583 implementation used by the interoperability tests and the benchmarks.

Encoding kinds
--------------
``n``   numeric, BCD packed two digits a byte; odd digit counts are left-aligned and padded
        on the right with a ``0`` nibble; ``len_max`` counts digits.
``z``   track data, BCD with ``D`` as the field separator ``=``; padded like ``n``.
``an``/``ans``  ASCII, ``len_max`` counts characters.
``b``   binary, ``len_max`` counts bytes.

Length types: ``0`` fixed, ``2`` LLVAR (one BCD length byte), ``3`` LLLVAR (two BCD length
bytes). For ``n``/``z`` the length prefix counts digits, otherwise bytes.

Frame (outside this table): 2-byte big-endian length of what follows, 5-byte TPDU
(``60`` + destination + source; a reply swaps them), 6-byte header, 2-byte BCD MTI, 8-byte
binary bitmap (16 when bit 1 is set).
"""

from typing import Final, NamedTuple


class Field(NamedTuple):
    number: int
    kind: str  # "n", "z", "an", "ans" or "b"
    len_max: int  # digits for n/z, characters for an/ans, bytes for b
    len_type: int  # 0 fixed, 2 LLVAR, 3 LLLVAR
    name: str


FIXED, LLVAR, LLLVAR = 0, 2, 3

TPDU_BYTES: Final = 5
HEADER_BYTES: Final = 6
LENGTH_PREFIX_BYTES: Final = 2

FIELDS: Final[tuple[Field, ...]] = (
    Field(2, "n", 19, LLVAR, "Primary account number"),
    Field(3, "n", 6, FIXED, "Processing code"),
    Field(4, "n", 12, FIXED, "Amount, transaction (minor units of field 49)"),
    Field(6, "n", 12, FIXED, "Amount, cardholder billing (fen actually charged)"),
    Field(11, "n", 6, FIXED, "System trace audit number"),
    Field(12, "n", 6, FIXED, "Time, local transaction (hhmmss)"),
    Field(13, "n", 4, FIXED, "Date, local transaction (MMDD)"),
    Field(14, "n", 4, FIXED, "Date, expiration (YYMM)"),
    Field(15, "n", 4, FIXED, "Date, settlement (MMDD)"),
    Field(22, "n", 3, FIXED, "Point of service entry mode"),
    Field(23, "n", 3, FIXED, "Card sequence number"),
    Field(25, "n", 2, FIXED, "Point of service condition code"),
    Field(26, "n", 2, FIXED, "Point of service PIN capture code"),
    Field(32, "n", 11, LLVAR, "Acquiring institution identification code"),
    Field(35, "z", 37, LLVAR, "Track 2 data"),
    Field(36, "z", 104, LLLVAR, "Track 3 data"),
    Field(37, "an", 12, FIXED, "Retrieval reference number"),
    Field(38, "an", 6, FIXED, "Authorisation identification response"),
    Field(39, "an", 2, FIXED, "Response code"),
    Field(41, "ans", 8, FIXED, "Card acceptor terminal identification"),
    Field(42, "ans", 15, FIXED, "Card acceptor identification code (merchant)"),
    Field(44, "ans", 25, LLVAR, "Additional response data"),
    Field(48, "ans", 512, LLLVAR, "Additional data: settlement totals (0500/0510)"),
    Field(49, "an", 3, FIXED, "Currency code, transaction"),
    Field(51, "an", 3, FIXED, "Currency code, cardholder billing"),
    Field(52, "b", 8, FIXED, "PIN data"),
    Field(53, "n", 16, FIXED, "Security related control information"),
    Field(54, "an", 40, LLLVAR, "Balance amount"),
    Field(55, "b", 255, LLLVAR, "ICC data (TLV)"),
    Field(60, "n", 17, LLLVAR, "Reserved private: type, batch number, network code"),
    Field(61, "n", 29, LLLVAR, "Original transaction data"),
    Field(62, "b", 512, LLLVAR, "Reserved private: working keys"),
    Field(63, "ans", 163, LLLVAR, "Reserved private"),
    Field(64, "b", 8, FIXED, "Message authentication code"),
    Field(128, "b", 8, FIXED, "Message authentication code (secondary bitmap)"),
)

FIELD_BY_NUMBER: Final[dict[int, Field]] = {f.number: f for f in FIELDS}


def pyiso8583_spec() -> dict:
    """The same format as a pyiso8583 specification (for ``iso8583.decode``/``encode``).

    Header ``h`` is TPDU and message header together (11 binary bytes); the 2-byte length
    prefix is outside pyiso8583's scope and handled by the caller.
    """
    spec: dict = {
        "h": {"data_enc": "b", "len_enc": "b", "len_type": 0,
              "max_len": TPDU_BYTES + HEADER_BYTES, "desc": "TPDU + header"},
        "t": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 2,
              "desc": "Message type (BCD)"},
        "p": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8,
              "desc": "Primary bitmap"},
        "1": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8,
              "desc": "Secondary bitmap"},
    }
    for f in FIELDS:
        entry: dict = {"desc": f.name, "len_enc": "bcd", "len_type": {0: 0, 2: 1, 3: 2}[f.len_type],
                       "max_len": f.len_max}
        if f.kind in ("n", "z"):
            entry.update(data_enc="b", len_count="nibbles", right_pad="0")
        elif f.kind == "b":
            entry.update(data_enc="b")
        else:
            entry.update(data_enc="ascii")
        spec[str(f.number)] = entry
    return spec
