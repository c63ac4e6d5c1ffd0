"""Overload: open loop at a multiple of the measured closed-loop capacity (issue 13), with
load shedding on (``server.latency_budget_ms``) and, as the baseline, off.

The switch is pinned to one core and the generator to the other, as in ``bench.e2e``. The
capacity is measured closed loop first (64 x 32 by default); then each configuration gets a
fresh switch on the same data set and the same open-loop rate. Reported per run: the
latency of the requests answered with something other than 96 (what shedding protects),
the share shed (96), what the generator actually sent (on 2 cores it may not keep the
schedule: its own lateness is printed, and a generator that falls behind under-states the
overload), and the switch's resident memory before, at most during, and after the run.

    python -m onecard.bench.overload                       # 2x capacity, 10 s, budget 50 ms
    python -m onecard.bench.overload --factor 2 --duration 10 --json overload.json
    python -m onecard.bench.overload --hog     # the switch on half a core: really 2x
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from onecard.bench.e2e import _pin, metric_samples, run_load, start_switch

DURATION_S_MAX = 120


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc), 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """The largest RSS seen while the run lasts (sampled every 100 ms)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.max_bytes = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.max_bytes = max(self.max_bytes, rss_bytes(self.pid))


def shed_total(http_port: int) -> float:
    return sum(s.value for s in metric_samples(http_port, "onecard_requests_shed")
               if s.name.endswith("_total"))


def server_p99_ms(http_port: int) -> float:
    """The switch's own receive-to-written p99 over everything it answered (not the 96s,
    which are not in its latency histogram), as the upper bound of the bucket holding it.
    It leaves out time in the kernel before a read, so it is a floor, not the whole story."""
    buckets: dict[float, float] = {}
    for s in metric_samples(http_port, "onecard_request_latency_seconds"):
        if s.name.endswith("_bucket"):
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + s.value
    if not buckets or buckets[max(buckets)] == 0:
        return float("nan")
    total = buckets[max(buckets)]
    return 1000 * next(le for le in sorted(buckets) if buckets[le] >= 0.99 * total)


def one_run(tmp: Path, data_dir: Path, args, budget_ms: int, rate: float) -> dict:
    config = tmp / f"budget-{budget_ms}.toml"
    config.write_text(f"[server]\nlatency_budget_ms = {budget_ms}\n")
    proc, ports = start_switch(data_dir, args.cards, 0, config=config)
    try:
        before = rss_bytes(proc.pid)
        sampler = RssSampler(proc.pid)
        sampler.start()
        r = run_load(ports, data_dir, "iso8583", args.connections, 0, args.duration, 1,
                     tmp / "open.json", rate=rate)
        sampler.done.set()
        sampler.join()
        r["rss_before_mb"] = before / 2**20
        r["rss_max_mb"] = max(sampler.max_bytes, before) / 2**20
        r["rss_after_mb"] = rss_bytes(proc.pid) / 2**20
        r["switch_shed"] = shed_total(ports["http"])
        r["server_p99_ms"] = server_p99_ms(ports["http"])
        r["budget_ms"] = budget_ms
        return r
    finally:
        proc.terminate()
        proc.wait(60)


def describe(r: dict) -> str:
    total = max(r["completed"], 1)
    shed = r["codes"].get("96", 0)
    ans = r.get("latency_answered_ms") or {}
    lat = r["latency_ms"]
    how = f"shedding at {r['budget_ms']} ms" if r["budget_ms"] else "no shedding (baseline)"
    sent_rate = r["sent"] / max(r["seconds"], 1e-9)
    limit = " (generator hit its in-flight limit)" if r["overloaded"] else ""
    return (f"{how:<26} asked {r['rate']:>10,.0f}/s, sent {sent_rate:>10,.0f}/s, answered "
            f"{r['tps']:>10,.0f}/s{limit}"
            f"\n    answered, not 96: p50 {ans.get('p50', float('nan')):.2f}  p99 "
            f"{ans.get('p99', float('nan')):.2f}  p99.9 {ans.get('p99.9', float('nan')):.2f} ms"
            f" ({total - shed:,} replies); all replies p99 {lat.get('p99', float('nan')):.2f} ms"
            f"; the switch's own p99 (receive to write) <= {r['server_p99_ms']:.0f} ms"
            f"\n    shed (96): {shed:,} = {shed / total:.1%} of replies; switch RSS before "
            f"{r['rss_before_mb']:.0f} MB, max {r['rss_max_mb']:.0f} MB, after "
            f"{r['rss_after_mb']:.0f} MB; generator late (> 0.1 ms) "
            f"{r.get('late_sends', 0) / max(r['sent'], 1):.1%} (up to "
            f"{r.get('send_lag_max_ms', 0):.0f} ms, which counts in its latencies)")


def start_hog(core: int) -> subprocess.Popen:
    """A busy loop pinned to the switch's core: the switch gets about half of it, so that the
    one generator core can offer twice what the switch can do (without it, on 2 cores the
    generator saturates before the switch does and no overload is produced)."""
    return subprocess.Popen([*_pin(core), sys.executable, "-c", "while True: pass"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--factor", type=float, default=2.0, help="offered rate / capacity")
    p.add_argument("--max-run", default="64x32", help="closed loop measuring the capacity")
    p.add_argument("--connections", type=int, default=16, help="open-loop connections")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    p.add_argument("--budget-ms", type=int, default=50, help="latency_budget_ms when shedding")
    p.add_argument("--cards", type=int, default=100_000)
    p.add_argument("--hog", action="store_true",
                   help="share the switch's core with a busy loop for every run (capacity "
                   "included), so that one generator core can overload it")
    p.add_argument("--json")
    args = p.parse_args()
    if not 0 < args.duration <= DURATION_S_MAX or not 0 < args.factor <= 10:
        raise SystemExit(f"bench.overload: --duration in (0, {DURATION_S_MAX}], --factor "
                         "in (0, 10]")
    if args.budget_ms <= 0:
        raise SystemExit("bench.overload: --budget-ms must be positive (the baseline runs "
                         "with 0 anyway)")
    conns, window = (int(x) for x in args.max_run.split("x"))
    out: dict = {"runs": [], "hog": args.hog}
    hog = start_hog(0) if args.hog else None
    try:
        run_all(args, conns, window, out)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait(10)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


def run_all(args, conns: int, window: int, out: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data_dir = tmp / "data"
        proc, ports = start_switch(data_dir, args.cards, 0)          # shedding off
        try:
            top = run_load(ports, data_dir, "iso8583", conns, window, args.duration, 1,
                           tmp / "max.json")
        finally:
            proc.terminate()
            proc.wait(60)
        out["capacity_tps"] = top["tps"]
        rate = args.factor * top["tps"]
        print(f"capacity, closed loop {conns} x {window}: {top['tps']:,.0f} TPS; offering "
              f"{args.factor:g}x = {rate:,.0f}/s open loop over {args.connections} "
              f"connections for {args.duration:g} s", flush=True)
        for budget in (args.budget_ms, 0):
            r = one_run(tmp, data_dir, args, budget, rate)
            out["runs"].append(r)
            print(describe(r), flush=True)


if __name__ == "__main__":
    main()
