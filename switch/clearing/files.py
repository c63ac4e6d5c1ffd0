"""Clearing files: one per party per settlement date, generated from the committed journal
alone (protocols/CLEARING.md "Clearing files"); the same journal gives the same bytes.

CSV, one line per leg, because the parties read them with spreadsheets and finance systems
and every value is ASCII digits or codes (no quoting is ever needed); the columns are fixed
by ``COLUMNS`` and the header names the format version. The trailer carries the counts, the
totals and a SHA-256 of every line before it, so a file altered or cut short is detected by
``read`` (and by any party's own reader).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import msgspec
import numpy as np

from onecard.protocols import clearing
from onecard.protocols.journal import KIND_BY_NAME, KIND_BY_VALUE
from onecard.protocols.journal_codec import view
from onecard.switch.clearing.positions import Legs, Reference, shown
from onecard.switch.errors import ClearingError

MAGIC = "ONECARD-CLEARING"
VERSION = 1
COLUMNS = ("record_no", "settle_date", "time", "kind", "terminal", "seq", "card",
           "amount_asked_minor", "currency", "amount_fen", "fee_fen", "settle_fen", "orig_seq")
CNY = 156
ORIG_SEQ_LAYOUTS = {"VOID": "payment", "VOID_REVERSAL": "payment",
                    "MEDICAL_REFUND": "medical"}
ASKED_LAYOUT_KINDS = ("PURCHASE", "VOID", "REVERSAL", "VOID_REVERSAL")
APPORTION = "APPORTION"         # a transfer journey's apportionment line (not a journal kind)


class ClearingFileError(ClearingError, ValueError):
    """A clearing file that is not what its trailer says (the message says what differs)."""


class ClearingFile(msgspec.Struct, frozen=True):
    party: str
    date: str                       # YYYYMMDD
    cutover: str                    # HHMM
    rows: list[dict[str, str]]
    debit_fen: int
    credit_fen: int
    fee_fen: int
    net_fen: int


def mask_pan(pan: int) -> str:
    """First 6 and last 4 digits; the rest hidden (never a full card number in a file)."""
    digits = str(pan)
    return digits[:6] + "*" * max(len(digits) - 10, 0) + digits[-4:]


def file_name(party: str) -> str:
    return party.replace(":", "_") + ".csv"


def _record_columns(recs: np.ndarray, nos: np.ndarray, ref: Reference,
                    date: dt.date) -> dict[str, list[str]]:
    """Each record's columns but the per-party ones, as text."""
    if not len(recs):                  # an empty date (np.char cannot size no text)
        return {c: [] for c in COLUMNS}
    local = (recs["ts_us"] // 1_000_000 + clearing.CST_OFFSET_S).astype("datetime64[s]")
    times = np.char.replace(np.char.replace(np.char.replace(
        np.datetime_as_string(local), "-", ""), ":", ""), "T", "")
    kinds = [KIND_BY_VALUE[k].name for k in recs["kind"].tolist()]
    amount = recs["amount_fen"].astype(np.int64)
    payment = np.isin(recs["kind"], [KIND_BY_NAME[k].value for k in ASKED_LAYOUT_KINDS])
    p = view(recs, "payment")
    asked = np.where(payment, p["amount_asked_minor"], amount)
    currency = np.where(payment, p["currency"], CNY)
    orig = np.zeros(len(recs), dtype=np.int64)
    for kind, layout in ORIG_SEQ_LAYOUTS.items():
        of_kind = recs["kind"] == KIND_BY_NAME[kind].value
        orig[of_kind] = view(recs, layout)["orig_seq"][of_kind]
    terminal = recs["terminal"].tolist()
    card = recs["card"].tolist()
    pans = ref.card_pan if ref.card_pan is not None else np.zeros(0, dtype=np.uint64)
    tids = ref.terminal_tid or []
    # a terminal or card the registry does not have (its legs are the suspense party's,
    # protocols/CLEARING.md) leaves its column empty
    return {
        "record_no": [str(n) for n in nos.tolist()],
        "settle_date": [date.strftime("%Y%m%d")] * len(recs),
        "time": times.tolist(),
        "kind": kinds,
        "terminal": [tids[t] if t < len(tids) else "" for t in terminal],
        "seq": [str(s) for s in recs["seq"].tolist()],
        "card": [mask_pan(int(pans[c])) if c < len(pans) else "" for c in card],
        "amount_asked_minor": [str(a) for a in asked.tolist()],
        "currency": [str(c) for c in currency.tolist()],
        "amount_fen": [str(a) for a in recs["amount_fen"].tolist()],
        "orig_seq": [str(o) for o in orig.tolist()],
    }


def _apportion_columns(day: Legs, journey: np.ndarray, ref: Reference,
                       date: dt.date) -> dict[str, list[str]]:
    """The columns of apportionment lines (``journey``: each line's index in
    ``day.journeys``): the discounted record's, but kind ``APPORTION``, the journey's
    undiscounted fare as asked, its charged total as the amount, and the first leg's journal
    record number as ``orig_seq`` (protocols/CLEARING.md "Transit apportionment")."""
    if not len(journey):               # no transfer journey (np.char cannot size no text)
        return {c: [] for c in COLUMNS}
    first, second = day.journeys.first[journey], day.journeys.second[journey]
    recs = day.records
    columns = _record_columns(np.ascontiguousarray(recs[second]), day.nos[second], ref, date)
    charged = recs["amount_fen"][first].astype(np.int64) + recs["amount_fen"][second]
    discount = view(recs, "tap")["transfer_discount_fen"]
    undiscounted = charged + discount[first] + discount[second]
    columns["kind"] = [APPORTION] * len(journey)
    columns["amount_asked_minor"] = [str(a) for a in undiscounted.tolist()]
    columns["amount_fen"] = [str(a) for a in charged.tolist()]
    columns["orig_seq"] = [str(n) for n in day.nos[first].tolist()]
    return columns


def render(day: Legs, ref: Reference, date: dt.date, cutover: str) -> dict[str, bytes]:
    """Every party's file of the date: {party: bytes}, parties and lines in a fixed order
    (by party, then by journal record number, then by leg)."""
    kept = shown(day.signed, day.fee)     # as positions count them: a file agrees to the fen
    plain = kept[:day.plain]
    used, local = np.unique(day.row[:day.plain][plain], return_inverse=True)
    columns = _record_columns(np.ascontiguousarray(day.records[used]), day.nos[used], ref, date)
    # The apportionment's legs (after the records' own) each get their own line's columns.
    journey = np.flatnonzero(kept[day.plain:]) % max(len(day.journeys.second), 1)
    extra = _apportion_columns(day, journey, ref, date)
    local = np.concatenate([local, len(used) + np.arange(len(journey))])
    # Each line's columns before the per-party ones, joined once (a record has 2-4 legs).
    head = [",".join(values) for values in zip(
        *(columns[c] + extra[c] for c in COLUMNS[:10]), strict=True)]
    orig = columns["orig_seq"] + extra["orig_seq"]
    leg_party = day.party[kept]
    order = np.lexsort((np.arange(len(local)), day.nos[day.row[kept]], leg_party))
    party, row = leg_party[order], local[order]
    signed, fee = day.signed[kept][order], day.fee[kept][order]
    starts = (np.flatnonzero(np.r_[True, party[1:] != party[:-1]]) if len(party)
              else np.zeros(0, dtype=np.intp))
    ends = [*starts[1:].tolist(), len(party)] if len(party) else []
    out = {}
    for start, end in zip(starts, ends, strict=True):
        name = day.names[int(party[start])]
        header = (f"H,{MAGIC},{VERSION},{date.strftime('%Y%m%d')},{name},"
                  f"{cutover.replace(':', '')}\n")
        lines = [header]
        lines += [f"D,{head[r]},{f},{s},{orig[r]}\n" for r, s, f in zip(
            row[start:end].tolist(), signed[start:end].tolist(), fee[start:end].tolist(),
            strict=True)]
        body = "".join(lines).encode("ascii")
        part = signed[start:end]
        debit, credit = int(-part[part < 0].sum()), int(part[part > 0].sum())
        trailer = (f"T,{end - start},{debit},{credit},{int(fee[start:end].sum())},"
                   f"{credit - debit},{hashlib.sha256(body).hexdigest()}\n")
        out[name] = body + trailer.encode("ascii")
    return out


def write(files: dict[str, bytes], out_dir: str | Path, date: dt.date) -> list[Path]:
    """Write (or write again, identically) the date's files under DIR/YYYYMMDD/: every file
    to a temporary name, all made durable at once (one sync, not one fsync per party: a day
    has tens of thousands of parties), then renamed, so a crash never leaves half a file."""
    folder = Path(out_dir) / date.strftime("%Y%m%d")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for party, data in sorted(files.items()):
        path = folder / file_name(party)
        path.with_suffix(".csv.tmp").write_bytes(data)
        paths.append(path)
    os.sync()
    for path in paths:
        os.replace(path.with_suffix(".csv.tmp"), path)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)                       # the renames
    finally:
        os.close(fd)
    return paths


def read(path: str | Path) -> ClearingFile:
    """A clearing file, checked against its trailer (ClearingFileError otherwise)."""
    data = Path(path).read_bytes()
    lines = data.decode("ascii").splitlines(keepends=True)
    if len(lines) < 2 or not lines[0].startswith(f"H,{MAGIC},") or not lines[-1].startswith(
            "T,"):
        raise ClearingFileError(f"{path}: not a clearing file (header or trailer missing)")
    head = lines[0].rstrip("\n").split(",")
    if head[2] != str(VERSION) or len(head) != 6:
        raise ClearingFileError(f"{path}: format version {head[2]!r}, this reader knows "
                                f"{VERSION}")
    tail = lines[-1].rstrip("\n").split(",")
    body = "".join(lines[:-1]).encode("ascii")
    if len(tail) != 7 or hashlib.sha256(body).hexdigest() != tail[6]:
        raise ClearingFileError(f"{path}: checksum mismatch: the file was altered or cut")
    rows = [dict(zip(COLUMNS, line.rstrip("\n").split(",")[1:], strict=True))
            for line in lines[1:-1]]
    settle = [int(r["settle_fen"]) for r in rows]
    debit, credit = -sum(s for s in settle if s < 0), sum(s for s in settle if s > 0)
    fees = sum(int(r["fee_fen"]) for r in rows)
    if [int(t) for t in tail[1:6]] != [len(rows), debit, credit, fees, credit - debit]:
        raise ClearingFileError(f"{path}: the trailer's count and totals do not match "
                                f"its lines")
    return ClearingFile(party=head[4], date=head[3], cutover=head[5], rows=rows,
                        debit_fen=debit, credit_fen=credit, fee_fen=fees,
                        net_fen=credit - debit)
