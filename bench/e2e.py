"""End to end on loopback: start a switch (durable group commit, its own data set) pinned to
one core, drive it with ``onecard load`` pinned to the other, and report each run with the
switch's own CPU per request and records per commit.

``--synchronous FULL OFF`` runs everything once with each setting (OFF: no fsync, not
durable, for this measurement only) and prints what the fsync costs the switch's core per
commit: the difference in CPU per request times the records a commit carries.

    python -m onecard.bench.e2e                      # 64 x 32 and 64 x 1, ISO 8583 purchases
    python -m onecard.bench.e2e --runs 64x32 16x8 --duration 10 --protocol native
    python -m onecard.bench.e2e --runs 64x1 --synchronous FULL OFF
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

READY_TIMEOUT_S = 300.0     # a switch not ready by then (a store that never answers) is killed
LOAD_GRACE_S = 120.0        # a load generator this long past its duration is killed


def _pin(core: int | None) -> list[str]:
    if core is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return []
    return ["taskset", "-c", str(core)]


class SwitchStartError(RuntimeError):
    """The switch exited (or closed its output) before it was ready."""

    def __init__(self, returncode: int | None, last_line: str) -> None:
        super().__init__(f"switch did not start (exit code {returncode}): {last_line}")
        self.returncode = returncode
        self.last_line = last_line


def start_switch(data_dir: Path, cards: int, core: int | None, *, config: Path | None = None,
                 ready_timeout_s: float = READY_TIMEOUT_S) -> tuple[subprocess.Popen, dict]:
    """A switch for measuring: load shedding is off unless ``config`` has a [server] table
    (these benchmarks measure the normal path; a 96 would hide a slow request).
    SwitchStartError, with its exit code and last line, when it stops before ready."""
    cmd = [*_pin(core), sys.executable, "-m", "onecard.switch.cli", "serve", "--data-dir",
           str(data_dir), "--cards", str(cards), "--iso8583-port", "0", "--native-port", "0",
           "--http-port", "0"]
    text = config.read_text() if config is not None else ""
    if "[server]" not in text:
        text += "\n[server]\nlatency_budget_ms = 0\n"
    merged = data_dir.parent / f"{data_dir.name}-bench.toml"
    merged.parent.mkdir(parents=True, exist_ok=True)
    merged.write_text(text)
    cmd += ["--config", str(merged)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ports = {}
    last = ""
    timed_out = threading.Event()

    def kill() -> None:                     # ends the read loop below
        timed_out.set()
        proc.kill()

    watchdog = threading.Timer(ready_timeout_s, kill)
    watchdog.start()
    assert proc.stdout is not None              # stdout=PIPE
    try:
        for line in proc.stdout:
            if line.startswith("onecard: listening"):
                name, addr = line.split()[2:4]
                ports[name] = int(addr.rsplit(":", 1)[1])
            if line.startswith("onecard: ready"):
                return proc, ports
            last = line.strip() or last
    finally:
        watchdog.cancel()
    if timed_out.is_set():
        last = f"not ready after {ready_timeout_s:.0f} s, killed (last line: {last or '-'})"
    try:
        returncode = proc.wait(60)
    except subprocess.TimeoutExpired:       # output closed but still running: not ours to keep
        proc.kill()
        returncode = proc.wait(60)
    raise SwitchStartError(returncode, last)


def metric_samples(http_port: int, family: str) -> list:
    """The samples of one metric family on the switch's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    for f in text_string_to_metric_families(text):
        if f.name == family:
            return f.samples
    return []


def commits(http_port: int) -> tuple[float, float]:
    """(commits, records committed) so far, from the switch's histogram."""
    samples = {s.name: s.value for s in metric_samples(http_port, "onecard_commit_records")}
    return samples.get("onecard_commit_records_count", 0.0), samples.get(
        "onecard_commit_records_sum", 0.0)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, all its threads (Linux /proc; else None)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(ports: dict, data_dir: Path, protocol: str, connections: int, window: int,
             duration: float, core: int | None, out: Path, *, rate: float = 0.0,
             extra: tuple[str, ...] = ()) -> dict:
    """One ``onecard load`` run: closed loop with ``window``, or open loop at ``rate``/s
    (the schedule spun, not ticked, so requests leave on time; pin it to its own core)."""
    port = ports["iso8583" if protocol == "iso8583" else "native"]
    loop = ["--rate", str(rate), "--tick-us", "0"] if rate else ["--window", str(window)]
    cmd = [*_pin(core), sys.executable, "-m", "onecard.switch.cli", "load", "--protocol",
           protocol, "--port", str(port), "--connections", str(connections), *loop,
           "--duration", str(duration), "--data-dir", str(data_dir), "--balance-share", "0",
           "--json", str(out), *extra]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=duration + LOAD_GRACE_S)
    if done.returncode != 0:              # say why (e.g. too few gates for that many)
        how = f"at {rate:,.0f}/s" if rate else f"x{window}"
        raise SystemExit(f"onecard load {connections} {how} failed:\n{done.stderr.strip()}")
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", default=["64x32", "64x1"],
                   help="connections x window for each run")
    p.add_argument("--protocol", choices=("iso8583", "native"), default="iso8583")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--cards", type=int, default=100_000)
    p.add_argument("--synchronous", nargs="+", choices=("FULL", "NORMAL", "OFF"),
                   default=["FULL"], help="the journal's fsync setting(s) to run with; "
                   "anything but FULL is not durable and only for measuring")
    p.add_argument("--json")
    args = p.parse_args()
    specs = [_spec(spec) for spec in args.runs]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for sync in args.synchronous:
            data_dir = Path(tmp) / f"data-{sync}"        # each setting from the same start
            config = Path(tmp) / f"sync-{sync}.toml"
            config.write_text(f'[store]\nsynchronous = "{sync}"\n')
            proc, ports = start_switch(data_dir, args.cards, 0, config=config)
            try:
                for conns, window in specs:
                    r = measured_run(proc.pid, ports, data_dir, args, conns, window,
                                      Path(tmp) / "r.json")
                    r["synchronous"] = sync
                    results.append(r)
                    _print_run(args.protocol, r, conns, window)
            finally:
                proc.terminate()
                proc.wait(60)
    if "FULL" in args.synchronous and "OFF" in args.synchronous:
        _print_fsync_cost(results, specs)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def _spec(text: str) -> tuple[int, int]:
    conns, _, window = text.partition("x")
    if not (conns.isdigit() and window.isdigit() and int(conns) > 0 and int(window) > 0):
        raise SystemExit(f"bench.e2e: --runs takes CONNECTIONSxWINDOW, e.g. 64x32, not {text!r}")
    return int(conns), int(window)


def measured_run(pid: int, ports: dict, data_dir: Path, args: argparse.Namespace,
                  conns: int, window: int, out: Path) -> dict:
    """One closed-loop run, with the switch's CPU and commits over it."""
    cpu0, (commits0, records0) = cpu_seconds(pid), commits(ports["http"])
    r = run_load(ports, data_dir, args.protocol, conns, window, args.duration, 1, out)
    cpu1, (commits1, records1) = cpu_seconds(pid), commits(ports["http"])
    r["commits"] = commits1 - commits0
    r["records_per_commit"] = (records1 - records0) / max(commits1 - commits0, 1)
    if cpu0 is not None and cpu1 is not None:
        r["server_cpu_us_per_request"] = 1e6 * (cpu1 - cpu0) / max(r["completed"], 1)
        r["server_busy"] = (cpu1 - cpu0) / r["seconds"]
    return r


def _print_run(protocol: str, r: dict, conns: int, window: int) -> None:
    lat = r["latency_ms"]
    cpu = ""
    if "server_cpu_us_per_request" in r:
        cpu = (f"   switch {r['server_cpu_us_per_request']:.1f} µs CPU a request "
               f"({r['server_busy']:.0%} of its core)")
    print(f"{protocol} {r['synchronous']:<4} {conns:>3} connections x window {window:<3} "
          f"{r['tps']:>10,.0f} TPS   p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms"
          f"  p99.9 {lat['p99.9']:.3f} ms   approved "
          f"{100 * r['codes'].get('00', 0) / max(r['completed'], 1):.1f}%{cpu}, "
          f"{r['records_per_commit']:.0f} records a commit", flush=True)


def _print_fsync_cost(results: list[dict], specs: list[tuple[int, int]]) -> None:
    """What the fsync costs the switch's core a commit, run by run: the extra CPU a request
    with FULL over OFF, times the records a FULL commit carries."""
    runs = {(r["synchronous"], r["connections"], r["window"]): r for r in results}
    for conns, window in specs:
        full, off = runs[("FULL", conns, window)], runs[("OFF", conns, window)]
        if "server_cpu_us_per_request" not in full:
            return
        extra_us = full["server_cpu_us_per_request"] - off["server_cpu_us_per_request"]
        if extra_us <= 0:
            print(f"{conns}x{window}: the fsync's CPU is within the runs' noise "
                  f"({full['records_per_commit']:.0f} records a commit)")
            continue
        print(f"{conns}x{window}: the fsync costs the switch "
              f"{extra_us * full['records_per_commit']:.0f} µs of CPU a commit ({extra_us:.1f} µs "
              f"a request over {full['records_per_commit']:.0f} records a commit)")


if __name__ == "__main__":
    main()
