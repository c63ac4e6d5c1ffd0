"""A settlement date cleared from the store the way the running switch clears it (issue 28):
one date of ``--records`` inside a journal of ``--days`` such dates, against the same date
alone in its journal; time, the worker process's peak memory, and how much the serving
process (here: this one, answering the worker's card questions) grew.

    python -m onecard.bench.clearing_store                       # 10M-record date in 100M
    python -m onecard.bench.clearing_store --records 1000000 --days 10 --json out.json

The data set is a demo one (its registry and cards); the records are bench.clearing's
synthetic day, shifted to each date and appended to the journal as the committer writes it
(rows of one calendar day, indexed). The clearing is ClearingService's own path: a forkserver
worker reading the date's rows by the day index, asking for its cards in chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import numpy as np

from onecard.bench.clearing import DATE, day, reference
from onecard.protocols import clearing, journal_codec
from onecard.protocols.codes import CODE_INDEX
from onecard.protocols.journal import KIND_BY_NAME
from onecard.protocols.journal_codec import view
from onecard.switch import demo
from onecard.switch.clearing.service import ClearingService
from onecard.switch.store import loader, sqlite

if TYPE_CHECKING:
    from onecard.core.state import State
    from onecard.switch.config import Config
    from onecard.switch.store.backend import JournalWriter

ROW_RECORDS = 1024                     # records per journal row (the committer's are 1-4,096)


def _progress(msg: str) -> None:
    print(f"clearing_store: {msg}", file=sys.stderr, flush=True)


def _append(data_dir: Path, recs: np.ndarray) -> None:
    """Records appended to the data set's journal in rows of one calendar day."""
    conn = sqlite.connect(sqlite.db_path(data_dir), synchronous="OFF")
    try:
        first_no = sqlite.journal_end(conn)
        cuts = [*journal_codec.day_runs(recs).tolist(), len(recs)]
        rows = []
        for lo, hi in itertools.pairwise(cuts):
            for a in range(lo, hi, ROW_RECORDS):
                b = min(a + ROW_RECORDS, hi)
                rows.append((first_no + a, b - a, 0, recs[a:b].tobytes(), journal_codec.FORMAT,
                             *journal_codec.row_index(recs[a:b])))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO journal VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _with_settlements(recs: np.ndarray, terminals: int, day_index: int) -> np.ndarray:
    """The date's records and every terminal's settlement of the day (balanced, at 22:30),
    in time order: POS terminals settle daily, so a batch is a day's records (bench.clearing's
    day alone has a settlement only where a batch is unbalanced)."""
    start = int(dt.datetime.combine(DATE, dt.time(22, 30), clearing.CST).timestamp() * 1e6)
    settles = np.zeros(terminals, dtype=recs.dtype)
    settles["kind"], settles["rc"] = KIND_BY_NAME["SETTLE"].value, CODE_INDEX["00"]
    settles["terminal"] = np.arange(terminals)
    settles["ts_us"] = start + (day_index * 86_400 * 10**6) + np.arange(terminals)
    st = view(settles, "settle")
    st["result"], st["batch_no_next"] = 1, 100 + day_index
    both = np.concatenate([recs, settles])
    return both[np.argsort(both["ts_us"], kind="stable")]


def _vm(field: str) -> int:
    """A /proc/self/status size (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _clear(data_dir: Path, cards: np.ndarray, date: dt.date) -> dict:
    """One date through ClearingService (its worker), as the switch's admin API runs it; the
    serving side's growth measured from a reset peak (clear_refs 5)."""
    config = SimpleNamespace(
        data_dir=str(data_dir), store=SimpleNamespace(backend="sqlite", dsn=""),
        clearing=SimpleNamespace(cutover=clearing.CUTOVER_DEFAULT, grace_s=60.0, out_dir="",
                                 fee_table=lambda: dict(clearing.FEES_DEFAULT)))
    # Stand-ins with what the service reads of them: the [clearing] settings, the durable end
    # (nothing is being committed) and the live cards.
    service = ClearingService(cast("Config", config),
                              cast("JournalWriter", SimpleNamespace(durable_no=0)),
                              cast("State", SimpleNamespace(cards=cards)))
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _vm("VmRSS")
    began = time.perf_counter()
    summary = asyncio.run(service.run(date, write=False))
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "moving_records": summary.records,
            "parties": len(summary.positions),
            "worker_peak_rss_mib": service.worker_peak_rss_bytes / 2**20,
            "serving_growth_mib": (_vm("VmHWM") - rss_before) / 2**20,
            "exceptions": service.open_exceptions}


def run(args: argparse.Namespace, tmp: Path) -> dict:
    base = tmp / "base"
    demo.generate(base, cards=args.cards, progress=lambda _: None)
    state = loader.load(base).state
    cards = state.cards[["pan", "region"]].copy()
    rng = np.random.default_rng(args.seed)
    ref = reference(len(cards), state.n_terminals, rng)
    alone, full = tmp / "alone", tmp / "full"
    shutil.copytree(base, alone)
    shutil.copytree(base, full)
    middle = args.days // 2
    one_day_us = 86_400 * 10**6
    for k in range(args.days):
        _progress(f"date {k + 1} of {args.days}: {args.records:,} records")
        recs = day(args.records, ref, np.random.default_rng(args.seed + k))
        recs["ts_us"] += (k - middle) * one_day_us
        recs = _with_settlements(recs, state.n_terminals, k - middle)
        _append(full, recs)
        if k == middle:
            _append(alone, recs)
        del recs
    _progress(f"clearing {DATE} alone, then inside {args.days * args.records:,} records")
    out = {"records": args.records, "days": args.days, "cards": len(cards),
           "alone": _clear(alone, cards, DATE), "inside": _clear(full, cards, DATE)}
    assert out["alone"]["moving_records"] == out["inside"]["moving_records"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=10_000_000, help="records per date")
    p.add_argument("--days", type=int, default=10, help="dates in the journal")
    p.add_argument("--cards", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=28)
    p.add_argument("--dir", help="work here (default: a temporary directory; needs about "
                   "records x days x 90 bytes)")
    p.add_argument("--json", help="write the figures as JSON here")
    args = p.parse_args(argv)
    if not (1_000 <= args.records <= 50_000_000 and 1 <= args.days <= 100
            and 1_000 <= args.cards <= 10_000_000):
        raise SystemExit("clearing_store: --records 1000..50M, --days 1..100, --cards 1000..10M")
    with tempfile.TemporaryDirectory(prefix="onecard-clearing-store-", dir=args.dir) as t:
        r = run(args, Path(t))
    a, i = r["alone"], r["inside"]
    print(f"one date of {r['records']:,} records ({a['moving_records']:,} moving money, "
          f"{a['parties']:,} parties), {r['cards']:,} cards")
    for name, x in (("alone in its journal", a),
                    (f"inside {r['records'] * r['days']:,} records", i)):
        print(f"  {name:34} {x['seconds']:7.2f} s  {x['moving_records'] / x['seconds']:>12,.0f} "
              f"records/s  worker peak {x['worker_peak_rss_mib']:>7,.0f} MiB  serving process "
              f"+{x['serving_growth_mib']:,.1f} MiB")
    print(f"inside / alone: time {i['seconds'] / a['seconds']:.2f}x, worker peak "
          f"{i['worker_peak_rss_mib'] / a['worker_peak_rss_mib']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
