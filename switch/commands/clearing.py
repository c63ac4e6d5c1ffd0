"""``onecard clearing run|files|medical|hub``: a settlement date's positions, clearing files,
medical totals and the netting between regions, from a data set's committed journal (issue
16, protocols/CLEARING.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import msgspec
import numpy as np

from onecard.protocols import clearing
from onecard.switch.clearing import exceptions, files, hub, medical, reader
from onecard.switch.clearing.positions import (
    ClearingError,
    Day,
    Legs,
    Reference,
    legs,
    summarise,
)

# FutureDate and current_date are imported from here by callers written before they moved.
from onecard.switch.clearing.reader import DateError, registry, settlement_date
from onecard.switch.clearing.reader import FutureDate as FutureDate
from onecard.switch.clearing.reader import current_date as current_date
from onecard.switch.store import loader, sqlite
from onecard.switch.store.backend import open_store


def read_store(data_dir: str | Path, card_pan: np.ndarray, card_region: np.ndarray,
               dsn: str | None, first: dt.date, last: dt.date,
               cutover: str) -> tuple[Reference, np.ndarray, np.ndarray]:
    """The registry and the committed records settlement dates first..last need (their
    own and their context: reader.read_dates), from the data set's SQLite store, or with
    ``dsn`` from its PostgreSQL store. Only those dates' rows are read (the day index)."""
    if dsn:
        from onecard.switch.store.pg.db import open_db
        from onecard.switch.store.pg.journal import rows_of_days

        db = open_db(dsn)
        try:
            return (registry(db, card_pan, card_region),
                    *reader.read_dates(lambda a, b, k: rows_of_days(db.pg, a, b, k), first,
                                       last, cutover))
        finally:
            db.close()
    conn = sqlite.connect(sqlite.db_path(data_dir), readonly=True)
    try:
        return (registry(conn, card_pan, card_region),
                *reader.read_dates(lambda a, b, k: sqlite.rows_of_days(conn, a, b, k), first,
                                   last, cutover))
    finally:
        conn.close()


def reference(data_dir: str | Path, first: dt.date, last: dt.date, cutover: str,
              kek_file: str | None = None,
              dsn: str | None = None) -> tuple[Reference, np.ndarray, np.ndarray]:
    """A data set at rest: its registry with its cards after replay (cards issued since a
    checkpoint count), and the committed records of settlement dates first..last."""
    state = loader.load(data_dir, kek_file=kek_file, dsn=dsn).state
    return read_store(data_dir, state.cards["pan"].copy(), state.cards["region"], dsn, first,
                      last, cutover)


def load(data_dir: str | Path, date: dt.date, *, cutover: str = clearing.CUTOVER_DEFAULT,
         fees: dict[str, clearing.Fee] | None = None, kek_file: str | None = None,
         dsn: str | None = None) -> tuple[Legs, Reference]:
    """The date's legs from the data set's committed journal, and the registry they were
    resolved with."""
    ref, recs, nos = reference(data_dir, date, date, cutover, kek_file, dsn)
    return legs(recs, nos, ref, date, cutover=cutover, fees=fees), ref


def clear(data_dir: str | Path, date: dt.date, *, cutover: str = clearing.CUTOVER_DEFAULT,
          fees: dict[str, clearing.Fee] | None = None, kek_file: str | None = None,
          dsn: str | None = None) -> Day:
    """The date's positions from the data set's committed journal."""
    day, _ = load(data_dir, date, cutover=cutover, fees=fees, kek_file=kek_file, dsn=dsn)
    return summarise(day, date, cutover)


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


def report(day: Day) -> str:
    lines = [f"settlement date {day.date} (cut-over {day.cutover} China time): "
             f"{day.records:,} records moved money, {len(day.positions)} parties",
             f"{'party':32}{'records':>9}{'debit':>16}{'credit':>16}{'fees':>12}{'net':>16}"]
    for p in day.positions:
        lines.append(f"{p.party:32}{p.count:>9,}{_yuan(p.debit_fen):>16}"
                     f"{_yuan(p.credit_fen):>16}{_yuan(p.fee_fen):>12}{_yuan(p.net_fen):>16}")
    lines.append(f"{'sum of net positions':32}{'':>69}"
                 f"{_yuan(sum(p.net_fen for p in day.positions)):>16}")
    return "\n".join(lines)


def add_arguments(sub, common) -> None:
    c = sub.add_parser("clearing", help="clearing and settlement from the committed journal")
    csub = c.add_subparsers(dest="clearing_command", required=True)
    r = common(csub.add_parser("run", help="a settlement date's net positions per party"))
    r.add_argument("--date", required=True, help="settlement date, YYYY-MM-DD")
    r.add_argument("--json", help="write the positions as JSON here")
    m = common(csub.add_parser("medical", help="medical totals per institution and fund, "
                               "the monthly claim per institution, cross-province totals"))
    when = m.add_mutually_exclusive_group(required=True)
    when.add_argument("--date", help="one settlement date, YYYY-MM-DD")
    when.add_argument("--month", help="every settlement date of a month, YYYY-MM")
    m.add_argument("--json", help="write the totals as JSON here")
    h = common(csub.add_parser("hub", help="net the regions' positions of a date between "
                               "regions (each region's data set)"))
    h.add_argument("--date", required=True, help="settlement date, YYYY-MM-DD")
    h.add_argument("--region", action="append", required=True, metavar="NAME=DATA_DIR",
                   help="a region and its data set (repeat for each region)")
    x = common(csub.add_parser("exceptions", help="a settlement date's reconciliation "
                               "exceptions (batch uploads) and their adjustments"))
    x.add_argument("--date", required=True, help="settlement date, YYYY-MM-DD")
    x.add_argument("--json", help="write the exceptions as JSON here")
    f = common(csub.add_parser("files", help="a settlement date's clearing file per party"))
    f.add_argument("--date", required=True, help="settlement date, YYYY-MM-DD")
    f.add_argument("--out", required=True, help="directory: files go to OUT/YYYYMMDD/")


def _period(args: argparse.Namespace, cutover: str) -> tuple[dt.date, dt.date]:
    """The dates a command covers: --date, or every date of --month."""
    if getattr(args, "month", None):
        try:
            first = dt.date.fromisoformat(args.month + "-01")
        except ValueError:
            raise DateError(f"month {args.month!r} is not YYYY-MM") from None
        last = (first + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)
        settlement_date(first.isoformat(), cutover)   # not a month still to come
        return first, last
    date = settlement_date(args.date, cutover)
    return date, date


def run(args: argparse.Namespace, config) -> int:
    try:
        first, date = _period(args, config.clearing.cutover)
    except ValueError as exc:
        print(f"onecard clearing: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        if args.clearing_command == "medical":
            return _medical(config, first, date, args.json)
        if args.clearing_command == "hub":
            return _hub(config, date, args.region)
        if args.clearing_command == "exceptions":
            return _exceptions(config, date, args.json)
        day, ref = load(config.data_dir, date, cutover=config.clearing.cutover,
                        fees=config.clearing.fee_table(),
                        kek_file=config.security.kek_file or None, dsn=store_dsn(config))
    except ClearingError as exc:         # the journal as it is (a hub's party, too): 1
        print(f"onecard clearing: {exc}", file=sys.stderr)
        return exc.exit_status
    if args.clearing_command == "files":
        return _files(day, ref, date, config.clearing.cutover, Path(args.out), started)
    summary = summarise(day, date, config.clearing.cutover)
    print(report(summary))
    print(f"cleared in {time.perf_counter() - started:.2f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_bytes(msgspec.json.encode(summary))
    return 0


def _files(day: Legs, ref: Reference, date: dt.date, cutover: str, out: Path,
           started: float) -> int:
    rendering = time.perf_counter()
    rendered = files.render(day, ref, date, cutover)
    paths = files.write(rendered, out, date)
    lines = sum(data.count(b"\n") for data in rendered.values())
    took = time.perf_counter() - rendering
    print(f"onecard clearing: {len(paths)} files, {lines:,} lines in "
          f"{out / date.strftime('%Y%m%d')}/ ({lines / max(took, 1e-9):,.0f} lines/s; "
          f"{time.perf_counter() - started:.2f} s in all)")
    return 0


def store_dsn(config) -> str | None:
    """The PostgreSQL store's connection string, or None for the embedded SQLite store."""
    return open_store(config).dsn


def _medical(config, first: dt.date, last: dt.date, json_path: str | None) -> int:
    ref, recs, nos = reference(config.data_dir, first, last, config.clearing.cutover,
                               config.security.kek_file or None, store_dsn(config))
    totals = medical.medical(recs, ref, first, last, cutover=config.clearing.cutover)
    print(f"medical clearing, settlement dates {first} to {last}")
    for title, rows in (("per institution and insuring fund", totals.by_institution_fund),
                        ("monthly claim per institution", totals.by_institution),
                        ("cross-province: treating province, home province",
                         totals.cross_province)):
        print(f"{title}:")
        print(f"  {'':32}{'bills':>7}{'bill':>14}{'pool':>14}{'personal':>14}{'cash':>14}")
        for t in rows:
            print(f"  {' / '.join(t.key):32}{t.bills:>7,}{_yuan(t.bill_fen):>14}"
                  f"{_yuan(t.pool_fen):>14}{_yuan(t.personal_fen):>14}{_yuan(t.cash_fen):>14}")
    dates = medical.totals_dates(recs, first, last)
    differences = [d for date in dates for d in medical.totals_differences(
        recs, nos, ref, date, cutover=config.clearing.cutover)]
    print("\n".join(totals_report(differences, len(dates))))
    if json_path:
        Path(json_path).write_bytes(msgspec.json.encode(
            {**msgspec.structs.asdict(totals),
             "totals_differences": [d._asdict() for d in differences]}))
    return 0


def _exceptions(config, date: dt.date, json_path: str | None) -> int:
    ref, recs, nos = reference(config.data_dir, date, date, config.clearing.cutover,
                               config.security.kek_file or None, store_dsn(config))
    found = exceptions.find(recs, nos, ref, date, cutover=config.clearing.cutover)
    still = sum(e.status == "open" for e in found)
    print(f"settlement date {date}: {len(found)} exceptions, {still} open")
    for e in found:
        done = (f"resolved by record {e.adjustment.record_no}: {e.adjustment.direction} "
                f"{_yuan(e.adjustment.amount_fen)}" if e.adjustment else
                f"open; suggested {e.suggested_direction} {_yuan(e.suggested_fen)}")
        print(f"  {e.id}\n    {e.detail}\n    {done}")
    if json_path:
        Path(json_path).write_bytes(msgspec.json.encode(found))
    return 0


def totals_report(differences: list[medical.MedicalDifference], dates: int) -> list[str]:
    """The institutions' daily totals (3201) that differ from the switch's, one line each:
    amounts in yuan, counts as counts."""
    if not differences:
        return [f"institutions' daily totals: no differences ({dates} dates with totals)"]
    lines = [f"institutions' daily totals that differ from the switch's ({len(differences)}):",
             f"  {'date':12}{'institution / terminal':32}{'':12}{'switch':>14}"
             f"{'institution':>14}{'record':>10}"]
    for d in differences:
        show = _yuan if d.fund in ("pool", "personal", "cash") else "{:,}".format
        lines.append(f"  {d.settle_date.isoformat():12}{d.institution + ' / ' + d.terminal:32}"
                     f"{d.fund:12}{show(d.switch_value):>14}{show(d.institution_value):>14}"
                     f"{d.record_no:>10}")
    return lines


def _hub(config, date: dt.date, regions: list[str]) -> int:
    """Each region's positions from its own data set, netted between regions."""
    days, owners, journals = {}, {}, {}
    acquirer_province: dict[str, int] = {}
    for spec in regions:
        name, sep, data_dir = spec.partition("=")
        if not (sep and name and data_dir and Path(data_dir).is_dir()):
            print(f"onecard clearing: --region {spec!r} is not NAME=DATA_DIR (an existing "
                  f"data directory)", file=sys.stderr)
            return 2
        day, ref = load(data_dir, date, cutover=config.clearing.cutover,
                        fees=config.clearing.fee_table())
        days[name] = summarise(day, date, config.clearing.cutover)
        journals[name] = (day.records, day.nos)
        # A region's data set holds its own provinces' cards only (onecard region split).
        owners.update({int(p): name for p in np.unique(ref.card_province)})
        assert ref.terminal_province is not None    # load reads it with the terminals
        acquirer_province.update(zip(ref.terminal_acquirer, ref.terminal_province.tolist(),
                                     strict=True))
    netted = hub.net(days, owners, acquirer_province)        # HubError: run's, exit 1
    print(f"hub netting, settlement date {date}: {len(netted.flows)} flows between regions")
    for f in netted.flows:
        print(f"  {f.payer:>12} pays {f.payee:<12}{_yuan(f.fen):>16}")
    for r in netted.regions:
        print(f"  {r.region:>12} net {_yuan(r.net_fen):>16}")
    late = [x for acq in journals for iss in journals if acq != iss
            for x in hub.late_approvals(acq, journals[acq][0], iss, *journals[iss], date,
                                        cutover=config.clearing.cutover)]
    print(f"late approvals (the terminal was told 91, the issuer approved): {len(late)}")
    for x in late:
        print(f"  {x.id} {x.acquirer} <- {x.issuer}: terminal {x.terminal} seq {x.seq} {x.kind} "
              f"{_yuan(x.amount_fen)} (issuer record {x.issuer_record_no})")
    return 0
