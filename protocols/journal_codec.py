"""Reading journal records by name: numpy dtypes per layout, typed values, and the reader of
version-1 records. Everything here is derived from the table in ``protocols/journal.py``.

    recs = unpack(blob)                                  # any records: the head's fields
    pays = view(recs[recs["kind"] == KIND_PURCHASE], "payment")
    pays["amount_asked_minor"], pays["currency"]         # named, typed columns
    decode(recs, first_no)                               # one msgspec Struct per record
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import msgspec
import numpy as np

from onecard.protocols.clearing import CST_OFFSET_S, DAYS_1970_TO_2000, SECONDS_PER_DAY
from onecard.protocols.journal import (
    FORMAT,
    HEAD,
    HEAD_BYTES,
    KIND_BY_VALUE,
    LAYOUTS,
    RECORD_BYTES,
    TYPES,
    V1_FIELDS,
    Field,
    layout_fields,
    place,
)


def _np_type(f: Field):
    numpy_type = TYPES[f.type][3]
    return (numpy_type, (TYPES[f.type][0],)) if f.type == "key16" else numpy_type


def _dtype(placed: list[tuple[Field, int]], extra: tuple = ()) -> np.dtype:
    return np.dtype({"names": [f.name for f, _ in placed] + [name for name, _, _ in extra],
                     "formats": [_np_type(f) for f, _ in placed] + [t for _, t, _ in extra],
                     "offsets": [offset for _, offset in placed] + [o for _, _, o in extra],
                     "itemsize": RECORD_BYTES})


# Any record: its head, and the rest as opaque bytes. Every byte belongs to a field, so a copy
# (concatenate, assignment, .copy()) keeps the whole record: numpy copies a structured array
# field by field and leaves bytes no field covers undefined.
RECORD_DTYPE = _dtype(place(HEAD), (("payload", f"V{RECORD_BYTES - HEAD_BYTES}", HEAD_BYTES),))
DTYPES: dict[str, np.dtype] = {layout: _dtype(layout_fields(layout)) for layout in LAYOUTS}
V1_DTYPE = np.dtype({"names": list(V1_FIELDS), "formats": [t for _, t in V1_FIELDS.values()],
                     "offsets": [o for o, _ in V1_FIELDS.values()], "itemsize": RECORD_BYTES})


def unpack(data: bytes) -> np.ndarray:
    """Packed records (the current format) as a read-only array of their heads."""
    if len(data) % RECORD_BYTES:
        raise ValueError(f"journal data of {len(data)} bytes is not a whole number of records")
    return np.frombuffer(data, dtype=RECORD_DTYPE)


def view(recs: np.ndarray, layout: str) -> np.ndarray:
    """Records (all of kinds with this layout) with the layout's named fields: a view for
    reading. Bytes between its fields are not copied by numpy: build records to write as
    RECORD_DTYPE, or through ``encode``."""
    if recs.dtype != RECORD_DTYPE:
        raise ValueError(f"not journal records: {recs.dtype}")
    return np.ascontiguousarray(recs).view(DTYPES[layout])


def _struct(layout: str) -> type[msgspec.Struct]:
    fields = [("no", int), ("kind_name", str)]
    fields += [(f.name, bytes if f.type == "key16" else int) for f, _ in layout_fields(layout)]
    name = "".join(part.title() for part in layout.split("_")) + "Record"
    return msgspec.defstruct(name, fields, frozen=True, kw_only=True, module=__name__)


STRUCTS: dict[str, type[msgspec.Struct]] = {layout: _struct(layout) for layout in LAYOUTS}


def decode(recs: np.ndarray, first_no: int | Iterable[int] = 0) -> list[msgspec.Struct]:
    """Each record as a typed value of its layout's Struct (``PaymentRecord``,
    ``TapRecord``, ...), numbered from ``first_no`` (or by the numbers given)."""
    numbers = (range(first_no, first_no + len(recs)) if isinstance(first_no, int)
               else list(first_no))
    out = []
    raw = np.ascontiguousarray(recs)
    for i, no in enumerate(numbers):
        kind = KIND_BY_VALUE.get(int(raw["kind"][i]))
        if kind is None or kind.layout is None:
            raise ValueError(f"journal record {no}: unknown kind {int(raw['kind'][i])}")
        row = raw[i:i + 1].view(DTYPES[kind.layout])[0]
        values = {name: (bytes(row[name]) if row[name].shape else int(row[name]))
                  for name in DTYPES[kind.layout].names or ()}
        out.append(STRUCTS[kind.layout](no=no, kind_name=kind.name, **values))
    return out


def _v1_value(old: np.ndarray, source: str) -> np.ndarray:
    if ":" not in source:
        return old[source]
    name, shift, bits = source.split(":")
    mask = np.uint64((1 << int(bits)) - 1)
    return (old[name].astype(np.uint64) >> np.uint64(int(shift))) & mask


def _v1_set(column: np.ndarray, rows: np.ndarray, f: Field, value: np.ndarray) -> None:
    # Through unsigned of the field's width: a packed i32 keeps its sign bit.
    width = TYPES[f.type][0]
    column[rows] = value.astype(f"<u{width}" if width > 1 else "u1").view(TYPES[f.type][3])


def upgrade(data: bytes, fmt: int) -> bytes:
    """Packed records of format ``fmt`` in the current format's layout. Version 1 is read
    through the table's ``v1`` sources; versions 2 and 3 share the layout and are returned as
    they are. Versions 1 and 2 keep CARD_ADMIN card numbers in clear: the store migration to
    schema 4 (``switch/store/encrypt.py``) enciphers them and rewrites those rows
    as version 3, so a start never applies a clear number as an enciphered one."""
    if fmt in (2, FORMAT):
        return data
    if fmt != 1:
        raise ValueError(f"journal format {fmt} is not known to this build (it reads 1, 2 "
                         f"and {FORMAT})")
    if len(data) % RECORD_BYTES:
        raise ValueError("version-1 journal data is not a whole number of records")
    old = np.frombuffer(data, dtype=V1_DTYPE)
    buf = np.zeros(len(data), dtype=np.uint8)          # written through views of it
    for f in HEAD:
        buf.view(RECORD_DTYPE)[f.name] = old[f.v1]
    for kind in KIND_BY_VALUE.values():
        rows = np.flatnonzero(old["kind"] == kind.value)
        if not len(rows) or not kind.layout or not LAYOUTS[kind.layout]:
            continue
        new, src = buf.view(DTYPES[kind.layout]), old[rows]
        for f in LAYOUTS[kind.layout]:
            if f.v1 == "-":            # a field added since: version 1 did not record it
                continue
            if f.v1 == "a+b":          # 16 raw bytes: a's eight, then b's
                raw = np.stack([src["a"], src["b"]], axis=1).astype("<u8")
                new[f.name][rows] = raw.view(np.uint8).reshape(len(rows), 16)
            else:
                _v1_set(new[f.name], rows, f, _v1_value(src, f.v1))
        if kind.layout == "settle":    # version 1 kept the debit total in amount_fen
            new["amount_fen"][rows] = 0
    return buf.tobytes()


# Every journal row holds the records of one China calendar day (days since 2000-01-01, the
# settlement date at a 00:00 cut-over) and says which: ``journal.day``, indexed with the bit
# mask of the kinds in the row (``journal.kinds``, bit k for kind value k). Clearing reads a
# date's rows and the rare kinds it needs from other days (adjustments, uploads, institutions'
# totals) by that index, never the whole journal. Both committers cut a row where the day
# changes; a row written without them (NULL) is read by every date.
assert len(KIND_BY_VALUE) <= 63, "a row's kinds are bits of a signed 64-bit integer"


def calendar_days(ts_us: np.ndarray) -> np.ndarray:
    """China calendar day (days since 2000-01-01) of each time."""
    seconds = np.floor_divide(np.asarray(ts_us, dtype=np.int64), 1_000_000)
    return (seconds + CST_OFFSET_S) // SECONDS_PER_DAY - DAYS_1970_TO_2000


def day_runs(recs: np.ndarray) -> np.ndarray:
    """Where records (in journal order) begin a new calendar day: the row cuts, 0 first."""
    if not len(recs):
        return np.zeros(0, dtype=np.int64)
    days = calendar_days(recs["ts_us"])
    return np.concatenate(([0], np.flatnonzero(days[1:] != days[:-1]) + 1))


def kinds_mask(kinds: np.ndarray) -> int:
    """The bit mask of the record kinds present (bit k: kind value k)."""
    return int(np.bitwise_or.reduce(np.left_shift(np.int64(1),
                                                  np.unique(kinds).astype(np.int64)),
                                    initial=np.int64(0)))


def row_index(recs: np.ndarray) -> tuple[int, int]:
    """A row's (day, kinds) columns; its records are of one day (cut by ``day_runs``)."""
    days = calendar_days(recs["ts_us"])
    assert len(days) and days.min() == days.max(), "a journal row holds one calendar day"
    return int(days[0]), kinds_mask(recs["kind"])


def day_rows(first_no: int, ts_us: int, fmt: int,
             blob: bytes) -> list[tuple[int, int, int, bytes, int, int, int]]:
    """A journal row written before rows had a day, as rows of one calendar day each:
    (first_no, n, ts_us, records, format, day, kinds), the records as they were."""
    recs = np.frombuffer(upgrade(blob, fmt), dtype=RECORD_DTYPE)
    cuts = [*day_runs(recs).tolist(), len(recs)]
    return [(first_no + lo, hi - lo, ts_us, blob[lo * RECORD_BYTES:hi * RECORD_BYTES], fmt,
             *row_index(recs[lo:hi])) for lo, hi in itertools.pairwise(cuts)]
