"""Open-loop latency at shares of the measured maximum (issue 3, target 3), beside the disk's
own durable-write latency measured in the same run.

The switch (durable group commit, its own data set) is pinned to one core and the generator
to the other, as in ``bench.e2e``. First the disk under the data directory is probed
(``bench.disk``: fsynced 4 KiB writes, the switch idle), then the maximum is measured closed
loop (64 connections x window 32 by default), then each share of it is offered open loop:
requests leave on a fixed schedule and latency counts from each one's scheduled time. For
each run the switch's own commits over 2 and 5 ms are read from its ``/metrics``, so a tail
can be put down to the disk or not. Last, the same rates are offered to the bare echo server
(``bench.echo_server``, same core): the tail that the generator, loopback TCP and this VM's
scheduling give on their own.

    python -m onecard.bench.latency                       # shares 0.1 0.25 0.5 of the maximum
    python -m onecard.bench.latency --shares 0.5 --duration 10 --json lat.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from onecard.bench.compare import start_server, stop_server
from onecard.bench.disk import probe
from onecard.bench.e2e import metric_samples, run_load, start_switch

TARGET_P99_MS = 2.0
TARGET_P999_MS = 5.0


def slow_commits(http_port: int) -> tuple[float, float, float]:
    """The switch's commits so far: (all, over 2 ms, over 5 ms), from its histogram."""
    buckets = {s.labels["le"]: s.value
               for s in metric_samples(http_port, "onecard_commit_latency_seconds")
               if s.name.endswith("_bucket")}
    total = buckets.get("+Inf", 0.0)
    return total, total - buckets.get("0.002", total), total - buckets.get("0.005", total)


def _late(result: dict) -> float:
    """Share of requests the generator itself sent over 0.1 ms after their scheduled time."""
    return result.get("late_sends", 0) / max(result["sent"], 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.25, 0.5],
                   help="open-loop rates as shares of the closed-loop maximum")
    p.add_argument("--max-run", default="64x32",
                   help="connections x window of the closed loop that measures the maximum")
    p.add_argument("--connections", type=int, default=64, help="open-loop connections")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    p.add_argument("--disk-seconds", type=float, default=5.0)
    p.add_argument("--cards", type=int, default=100_000)
    p.add_argument("--json")
    args = p.parse_args()
    if not all(0 < s <= 1 for s in args.shares):
        raise SystemExit("bench.latency: --shares must be in (0, 1]")
    if not 0 < args.duration <= 600:
        raise SystemExit("bench.latency: --duration must be in (0, 600]")
    try:
        conns, window = (int(x) for x in args.max_run.split("x"))
    except ValueError:
        raise SystemExit("bench.latency: --max-run is CONNECTIONSxWINDOW, e.g. 64x32") from None
    out: dict = {"runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        proc, ports = start_switch(data_dir, args.cards, 0)
        try:
            disk = probe(data_dir, args.disk_seconds)
            out["disk"] = asdict(disk)
            print(f"disk (the data directory's, switch idle): {disk.summary()}", flush=True)
            top = run_load(ports, data_dir, "iso8583", conns, window, args.duration, 1,
                           Path(tmp) / "max.json")
            out["max_tps"] = top["tps"]
            print(f"maximum, closed loop {conns} x {window}: {top['tps']:,.0f} TPS", flush=True)
            for share in args.shares:
                rate = share * top["tps"]
                before = slow_commits(ports["http"])
                r = run_load(ports, data_dir, "iso8583", args.connections, 0, args.duration, 1,
                             Path(tmp) / "open.json", rate=rate)
                after = slow_commits(ports["http"])
                commits, over2, over5 = (a - b for a, b in zip(after, before, strict=True))
                lat = r["latency_ms"]
                met = lat["p99"] <= TARGET_P99_MS and lat["p99.9"] <= TARGET_P999_MS
                out["runs"].append({"share": share, "rate": rate, "result": r,
                                    "commits": commits, "commits_over_2ms": over2,
                                    "commits_over_5ms": over5, "target_met": met})
                print(f"open loop {share:>4.0%} of max ({rate:>9,.0f}/s asked, "
                      f"{r['tps']:>9,.0f}/s done{', OVERLOADED' if r['overloaded'] else ''}): "
                      f"p50 {lat['p50']:.3f}  p99 {lat['p99']:.3f}  p99.9 {lat['p99.9']:.3f}  "
                      f"max {lat['max']:.1f} ms  [{'met' if met else 'not met'}: p99 <= "
                      f"{TARGET_P99_MS:g}, p99.9 <= {TARGET_P999_MS:g} ms]; switch commits over "
                      f"2 ms {over2 / r['seconds']:.2f}/s, over 5 ms "
                      f"{over5 / r['seconds']:.2f}/s of {commits / r['seconds']:,.0f}/s; "
                      f"generator late (> 0.1 ms) {_late(r):.3%}", flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
        echo, port = start_server(
            [sys.executable, "-m", "onecard.bench.echo_server", "--port", "0"], "echo: ready")
        try:
            for run in out["runs"]:
                r = run_load({"iso8583": port}, data_dir, "iso8583", args.connections, 0,
                             args.duration, 1, Path(tmp) / "echo.json", rate=run["rate"],
                             extra=("--no-signon",))
                run["echo"] = r
                lat = r["latency_ms"]
                print(f"echo server at {run['rate']:>9,.0f}/s: p50 {lat['p50']:.3f}  p99 "
                      f"{lat['p99']:.3f}  p99.9 {lat['p99.9']:.3f}  max {lat['max']:.1f} ms; "
                      f"generator late (> 0.1 ms) {_late(r):.3%}", flush=True)
        finally:
            stop_server(echo)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
