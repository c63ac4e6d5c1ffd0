"""A business day of clearing at scale (issue 16): net positions of a 10M-record settlement
date computed with numpy over the records, its peak memory, and clearing-file lines written
per second.

    python -m onecard.bench.clearing                        # 10M records, files for 1M
    python -m onecard.bench.clearing --records 1000000 --json clearing.json

The records are synthetic but shaped like a day of the demo scheme (taps, purchases with
voids and reversals, HKD purchases, venue entries, medical bills and refunds, top-ups,
credits, and records that move no money), over 1M cards in 12 provinces and 20,000
terminals. Baseline in the same run: one copy of the day's records (memory bandwidth: no
clearing can read its records faster), so the figure is also reported as a ratio to it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from onecard.protocols import clearing
from onecard.protocols.codes import CODE_INDEX
from onecard.protocols.journal import KIND_BY_NAME, NONE
from onecard.protocols.journal_codec import RECORD_DTYPE, view
from onecard.switch.clearing import exceptions, files
from onecard.switch.clearing.positions import Reference, legs, summarise

DATE = dt.date(2026, 11, 30)
MIX = {"TAP": 0.45, "OFFLINE_TAP": 0.05, "PURCHASE": 0.22, "VOID": 0.01, "REVERSAL": 0.01,
       "VENUE": 0.05, "MEDICAL": 0.05, "MEDICAL_REFUND": 0.005, "TOPUP": 0.02,
       "CREDIT": 0.02, "VERIFY": 0.05, "BALANCE": 0.035, "SIGNON": 0.03}
PROVINCES = np.array([11, 12, 13, 31, 32, 33, 34, 44, 81, 82, 35, 36])


def _progress(msg: str) -> None:
    print(f"clearing: {msg}", file=sys.stderr, flush=True)


def reference(cards: int, terminals: int, rng: np.random.Generator) -> Reference:
    province = PROVINCES[rng.integers(0, len(PROVINCES), cards)]
    return Reference(card_province=province, card_region=province * 10_000 + 100,
                     terminal_acquirer=[f"8980{t:011d}" if t % 10 else f"OP{t % 97:03d}"
                                        for t in range(terminals)],
                     app_codes=["FIN-PAY", "TRN-METRO", "MED-SETTLE", "TRN-TOPUP",
                                "CUL-MUSEUM"],
                     programme_codes=["PENSION", "HR-SUBSIDY"],
                     card_pan=(6231000000000000000 + np.arange(cards, dtype=np.uint64) * 7),
                     terminal_tid=[f"T{t:07d}" for t in range(terminals)])


def day(n: int, ref: Reference, rng: np.random.Generator) -> np.ndarray:
    """n records of the date, every field a clearing reads set, vectorised."""
    recs = np.zeros(n, dtype=RECORD_DTYPE)
    names = list(MIX)
    weights = np.array([MIX[k] for k in names])
    kinds = np.array([KIND_BY_NAME[k].value for k in names])[
        rng.choice(len(names), n, p=weights / weights.sum())]
    start = int(dt.datetime.combine(DATE, dt.time(), clearing.CST).timestamp() * 1e6)
    recs["kind"] = kinds
    recs["ts_us"] = np.sort(rng.integers(start - 3_600_000_000, start + 82_800_000_000, n))
    recs["amount_fen"] = rng.integers(100, 50_000, n)
    recs["card"] = rng.integers(0, len(ref.card_province), n)
    recs["account"] = recs["card"]            # a holder per card: transfers pair by account
    recs["terminal"] = rng.integers(0, len(ref.terminal_acquirer), n)
    recs["app"] = rng.integers(0, len(ref.app_codes), n)
    recs["seq"] = rng.integers(1, 999_999, n)
    recs["rc"] = np.where(rng.random(n) < 0.95, CODE_INDEX["00"], CODE_INDEX["51"])
    credit = kinds == KIND_BY_NAME["CREDIT"].value
    recs["terminal"][credit] = NONE
    m = view(recs, "medical")
    m["pool_fen"], m["personal_fen"] = rng.integers(0, 80_000, n), rng.integers(0, 20_000, n)
    p = view(recs, "payment")
    p["amount_asked_minor"], p["currency"] = recs["amount_fen"], 156
    view(recs, "credit")["programme"] = rng.integers(0, 3, n)
    # medical fields overlap the others in the record: write them last for medical kinds only
    medical = np.isin(kinds, [KIND_BY_NAME["MEDICAL"].value,
                              KIND_BY_NAME["MEDICAL_REFUND"].value])
    pool, personal = rng.integers(0, 80_000, n), rng.integers(0, 20_000, n)
    m["pool_fen"][medical], m["personal_fen"][medical] = pool[medical], personal[medical]
    _transfers_and_batches(recs, kinds, len(ref.terminal_acquirer), rng)
    return recs


def _transfers_and_batches(recs: np.ndarray, kinds: np.ndarray, terminals: int,
                           rng: np.random.Generator) -> None:
    """A tenth of the taps with a transfer discount (apportioned to the previous ride's
    operator), and one POS batch in 10,000 records settled unbalanced, then uploaded."""
    n = len(recs)
    taps = np.flatnonzero(kinds == KIND_BY_NAME["TAP"].value)
    discounted = taps[rng.random(len(taps)) < 0.1]
    view(recs, "tap")["transfer_discount_fen"][discounted] = 100
    settles = rng.choice(n, max(n // 10_000, 1), replace=False)
    recs["kind"][settles] = KIND_BY_NAME["SETTLE"].value
    recs["terminal"][settles] = settles % terminals       # never NONE
    recs["rc"][settles] = CODE_INDEX["00"]
    st = view(recs, "settle")
    st["result"][settles], st["batch_no_next"][settles] = 2, 2
    for s in settles.tolist():               # the terminal's upload: ten records after it
        rows = np.arange(s + 1, min(s + 11, n))
        rows = rows[~np.isin(rows, settles)]
        recs["kind"][rows] = KIND_BY_NAME["BATCH_UPLOAD"].value
        recs["terminal"][rows] = recs["terminal"][s]
        up = view(recs, "upload")
        up["batch_no"][rows], up["orig_kind"][rows] = 1, KIND_BY_NAME["PURCHASE"].value
        up["orig_kind"][rows[-1:]], up["count"][rows[-1:]] = 0, len(rows) - 1


def run(args) -> dict:
    rng = np.random.default_rng(args.seed)
    _progress(f"{args.records:,} synthetic records over {args.cards:,} cards")
    ref = reference(args.cards, args.terminals, rng)
    recs = day(args.records, ref, rng)
    nos = np.arange(len(recs), dtype=np.int64)
    copy_s = float("inf")
    for _ in range(3):                       # the first copy also faults the pages in
        began = time.perf_counter()
        copy = recs.copy()
        copy_s = min(copy_s, time.perf_counter() - began)
        del copy
    _progress("positions")
    tracemalloc.start()
    began = time.perf_counter()
    result = legs(recs, nos, ref, DATE)
    summary = summarise(result, DATE, clearing.CUTOVER_DEFAULT)
    clear_s = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sum(p.net_fen for p in summary.positions) == 0
    _progress("exceptions (reconciliation)")
    began = time.perf_counter()
    found = exceptions.find(recs, nos, ref, DATE)
    exceptions_s = time.perf_counter() - began
    sub = min(args.file_records, args.records)
    _progress(f"clearing files for the first {sub:,} records")
    part = legs(recs[:sub], nos[:sub], ref, DATE)
    began = time.perf_counter()
    rendered = files.render(part, ref, DATE, clearing.CUTOVER_DEFAULT)
    render_s = time.perf_counter() - began
    with tempfile.TemporaryDirectory(prefix="onecard-clearing-") as tmp:
        files.write(rendered, Path(tmp), DATE)
    files_s = time.perf_counter() - began
    lines = sum(data.count(b"\n") for data in rendered.values())
    return {"records": args.records, "moving_records": summary.records,
            "parties": len(summary.positions), "clear_s": clear_s,
            "exceptions": len(found), "exceptions_s": exceptions_s,
            "peak_mib": peak / 2**20, "records_mib": recs.nbytes / 2**20, "copy_s": copy_s,
            "file_records": sub, "file_lines": lines, "files": len(rendered),
            "render_s": render_s, "files_s": files_s, "lines_per_s": lines / files_s,
            "render_lines_per_s": lines / render_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=10_000_000)
    p.add_argument("--cards", type=int, default=1_000_000)
    p.add_argument("--terminals", type=int, default=20_000)
    p.add_argument("--file-records", type=int, default=1_000_000,
                   help="records whose clearing files are written (lines per second)")
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--json", help="write the figures as JSON here")
    args = p.parse_args(argv)
    if not (1_000 <= args.records <= 50_000_000 and 100 <= args.cards <= 100_000_000
            and 10 <= args.terminals <= 1_000_000 and 1 <= args.file_records):
        raise SystemExit("clearing: --records 1000..50M, --cards 100..100M, --terminals "
                         "10..1M, --file-records >= 1")
    r = run(args)
    print(f"{r['records']:,} records ({r['records_mib']:,.0f} MiB), {r['moving_records']:,} "
          f"moving money, {r['parties']:,} parties")
    print(f"positions: {r['clear_s']:.2f} s (aim <= 60 s), peak {r['peak_mib']:,.0f} MiB "
          f"(aim <= 2048 MiB); {r['clear_s'] / r['copy_s']:.1f}x one copy of the records "
          f"({r['copy_s']:.3f} s)")
    print(f"exceptions: {r['exceptions']:,} from the unbalanced batches' uploads in "
          f"{r['exceptions_s']:.2f} s")
    print(f"clearing files: {r['file_lines']:,} lines in {r['files']:,} files for "
          f"{r['file_records']:,} records in {r['files_s']:.2f} s: {r['lines_per_s']:,.0f} "
          f"lines/s written ({r['render_lines_per_s']:,.0f} lines/s rendered; the rest is "
          f"creating and syncing the files)")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
