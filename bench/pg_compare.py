"""Issue 14's comparison, in one run on this machine: the switch at 64 connections x window
32 (closed loop, ISO 8583 purchases) on each store, SQLite (synchronous=FULL) first as the
baseline, then PostgreSQL single node, PostgreSQL with one synchronous standby and the
Patroni cluster: TPS, p50/p99, records per commit, commits/s, each as a ratio to SQLite's,
and what the run cost the box (busy cores, the store's own CPU, load average).

    python -m onecard.bench.pg_compare --duration 10 --cards 100000
    python -m onecard.bench.pg_compare --topologies sqlite pg-sync --json out.json

Every topology runs on a demo data set of its own made with the same seed, the switch pinned
to core 0 and the load generator to core 1 as in bench.e2e; PostgreSQL, Patroni and etcd are
not pinned (they share both cores with the switch and the generator: all of it is one box).
A topology that cannot be set up, or whose switch refuses to start, is reported in one line
and the others still run; the exit code is then 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from onecard.bench import boxcost
from onecard.bench.e2e import SwitchStartError, commits, measured_run, start_switch
from onecard.bench.pg_topologies import (
    DESCRIPTIONS,
    TOPOLOGIES,
    TopologyError,
    open_store,
)

BASELINE: Final = "sqlite"
SYNC_TARGET: Final = 0.5          # issue 14: with a synchronous standby, >= 0.5x SQLite's TPS
DEMO_TIMEOUT_S: Final = 900
DURATION_MAX_S: Final = 600.0
SWITCH_STOP_TIMEOUT_S: Final = 60


class Progress:
    """Timestamped progress lines on stderr (the table goes to stdout)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.topology = ""

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {self.topology}: {text}",
              file=sys.stderr, flush=True)


def _demo_data(data_dir: Path, cards: int, progress: Progress) -> None:
    progress(f"onecard demo-data --cards {cards:,}")
    done = subprocess.run([sys.executable, "-m", "onecard.switch.cli", "demo-data", "--cards",
                           str(cards), "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    if done.returncode != 0:
        raise TopologyError(f"onecard demo-data failed: {done.stderr.strip()[-300:]}")


def _measure(name: str, data_dir: Path, work: Path, args: argparse.Namespace,
             progress: Progress) -> dict:
    """Set up one store, run the switch on it under load, tear everything down."""
    _demo_data(data_dir, args.cards, progress)
    with open_store(name, data_dir, work, progress) as store:
        config = work / f"{name}.toml"
        in_flight = f"commits_in_flight = {args.in_flight}\n" if name != "sqlite" else ""
        config.write_text(store.store_toml + in_flight)
        progress("starting the switch")
        proc, ports = start_switch(data_dir, args.cards, 0, config=config)
        try:
            progress(f"ready; {args.connections} connections x window {args.window} for "
                     f"{args.duration:g} s")
            run = argparse.Namespace(protocol="iso8583", duration=args.duration)
            with boxcost.Sampler(lambda: {"switch": [proc.pid], **store.trees()},
                                 lambda: commits(ports["http"])[0]) as box:
                r = measured_run(proc.pid, ports, data_dir, run, args.connections,
                                 args.window, work / f"{name}-load.json")
        finally:
            proc.terminate()
            try:
                proc.wait(SWITCH_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:    # before its store is torn down under it
                proc.kill()
                proc.wait(SWITCH_STOP_TIMEOUT_S)
    cost = box.loaded()
    return {
        "topology": name, "description": DESCRIPTIONS[name],
        "tps": r["tps"], "completed": r["completed"], "seconds": r["seconds"],
        "approved_share": r["codes"].get("00", 0) / max(r["completed"], 1),
        "latency_ms": r["latency_ms"], "records_per_commit": r["records_per_commit"],
        "commits": r["commits"], "commits_per_s": r["commits"] / max(r["seconds"], 1e-9),
        "switch_cpu_us_per_request": r.get("server_cpu_us_per_request"), "box": cost,
    }


def _run_one(name: str, tmp: Path, args: argparse.Namespace, progress: Progress) -> dict:
    """One topology's result, or its failure as one line (never a traceback)."""
    progress.topology = name
    work = tmp / name
    work.mkdir()
    try:
        result = _measure(name, work / "data", work, args, progress)
    except SwitchStartError as exc:
        line = f"the switch refused to start (exit code {exc.returncode}): {exc.last_line}"
        progress(line)
        return {"topology": name, "description": DESCRIPTIONS[name], "error": line}
    except (TopologyError, subprocess.SubprocessError, SystemExit) as exc:
        # SystemExit: run_load's way of saying the generator failed (its stderr follows).
        line = _one_line(exc)
        progress(line)
        return {"topology": name, "description": DESCRIPTIONS[name], "error": line}
    progress(f"{result['tps']:,.0f} TPS, {result['records_per_commit']:.0f} records a "
             f"commit, {result['commits_per_s']:,.0f} commits/s")
    return result


def _one_line(exc: BaseException) -> str:
    """An error in one line: a failed command's last line of stderr, else the first line."""
    stderr = getattr(exc, "stderr", None)
    if isinstance(stderr, str) and stderr.strip():
        return f"{exc.__class__.__name__}: {stderr.strip().splitlines()[-1]}"
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


def add_ratios(results: list[dict]) -> None:
    """Each result's TPS, commits/s and p99 as ratios to the baseline of the same run."""
    base = next((r for r in results if r["topology"] == BASELINE and "error" not in r), None)
    for r in results:
        if base is None or "error" in r:
            continue
        r["tps_ratio"] = r["tps"] / max(base["tps"], 1e-9)
        r["commits_ratio"] = r["commits_per_s"] / max(base["commits_per_s"], 1e-9)
        r["p99_ratio"] = r["latency_ms"]["p99"] / max(base["latency_ms"]["p99"], 1e-9)


def _ratio(r: dict, key: str) -> str:
    return f"{r[key]:.2f}x" if key in r else "-"


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    print(f"\n{args.connections} connections x window {args.window}, ISO 8583 purchases, "
          f"{args.duration:g} s each, {args.cards:,} cards; ratios to {BASELINE} of this run")
    print(f"{'topology':9} {'TPS':>9} {'x':>6} {'p50 ms':>7} {'p99 ms':>8} {'x p99':>6} "
          f"{'rec/commit':>10} {'commits/s':>9} {'x':>6} {'box busy':>8} {'switch':>7} "
          f"{'store':>7} {'load':>5}")
    for r in results:
        if "error" in r:
            print(f"{r['topology']:9} not measured: {r['error']}")
            continue
        box, lat = r["box"], r["latency_ms"]
        cores = box["cores"]
        store = [v for k, v in cores.items() if k != "switch"]
        store_text = f"{sum(store):>5.2f} c" if store else f"{'-':>7}"
        print(f"{r['topology']:9} {r['tps']:>9,.0f} {_ratio(r, 'tps_ratio'):>6} "
              f"{lat['p50']:>7.2f} {lat['p99']:>8.2f} {_ratio(r, 'p99_ratio'):>6} "
              f"{r['records_per_commit']:>10.0f} {r['commits_per_s']:>9,.0f} "
              f"{_ratio(r, 'commits_ratio'):>6} {box['box_busy_cores']:>6.2f} c "
              f"{cores['switch']:>5.2f} c {store_text} {box['loadavg_1m']:>5.1f}")
    print(f"box busy: cores of this {os.cpu_count()}-core machine in use during the load (all "
          "processes, the generator's included); switch, store: cores used by the switch and "
          "by the store's own processes (PostgreSQL, and Patroni + etcd; SQLite is inside the "
          "switch); load: 1-minute load average at the end")
    sync = next((r for r in results if r["topology"] == "pg-sync" and "tps_ratio" in r), None)
    if sync is not None:
        verdict = "met" if sync["tps_ratio"] >= SYNC_TARGET else "not met"
        print(f"synchronous standby vs SQLite: {sync['tps_ratio']:.2f}x (aim >= "
              f"{SYNC_TARGET}x): {verdict}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load a topology")
    p.add_argument("--cards", type=int, default=100_000)
    p.add_argument("--topologies", nargs="+", choices=TOPOLOGIES, default=list(TOPOLOGIES))
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--in-flight", type=int, default=2, choices=range(1, 17), metavar="N",
                   help="PostgreSQL: group commits in flight ([store] commits_in_flight)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if not 0 < args.duration <= DURATION_MAX_S:
        p.error(f"--duration: more than 0, at most {DURATION_MAX_S:g} s")
    if args.connections < 1 or args.window < 1 or args.cards < 1:
        p.error("--connections, --window and --cards must be positive")
    # The baseline first, so the ratios compare with a run just before, not after, the others.
    args.topologies = sorted(set(args.topologies), key=TOPOLOGIES.index)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    progress = Progress()
    machine = {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="onecard-pgcmp-") as tmp:
        # /tmp: the postgres user must reach the data sets' parents (pg_local's dirs are there)
        Path(tmp).chmod(0o711)
        results = [_run_one(name, Path(tmp), args, progress) for name in args.topologies]
    add_ratios(results)
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "connections": args.connections, "window": args.window,
            "duration_s": args.duration, "cards": args.cards, "baseline": BASELINE,
            "machine": machine, "results": results}, indent=2) + "\n")
    return 2 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
