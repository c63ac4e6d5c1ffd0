"""End to end on loopback: start a switch (durable group commit, its own data set) pinned to
one core, drive it with ``onecard load`` pinned to the other, and report each run.

    python -m onecard.bench.e2e                      # 64 x 32 and 64 x 1, ISO 8583 purchases
    python -m onecard.bench.e2e --runs 64x32 16x8 --duration 10 --protocol native
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def _pin(core: int | None) -> list[str]:
    if core is None or shutil.which("taskset") is None or os.cpu_count() < 2:
        return []
    return ["taskset", "-c", str(core)]


def start_switch(data_dir: Path, cards: int, core: int | None) -> tuple[subprocess.Popen, dict]:
    cmd = [*_pin(core), sys.executable, "-m", "onecard.switch.cli", "serve", "--data-dir",
           str(data_dir), "--cards", str(cards), "--iso8583-port", "0", "--native-port", "0",
           "--http-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ports = {}
    for line in proc.stdout:
        if line.startswith("onecard: listening"):
            name, addr = line.split()[2:4]
            ports[name] = int(addr.rsplit(":", 1)[1])
        if line.startswith("onecard: ready"):
            return proc, ports
    raise RuntimeError("switch did not start")


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
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
    p.add_argument("--json")
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        proc, ports = start_switch(data_dir, args.cards, 0)
        try:
            for spec in args.runs:
                conns, window = (int(x) for x in spec.split("x"))
                r = run_load(ports, data_dir, args.protocol, conns, window, args.duration, 1,
                             Path(tmp) / "r.json")
                results.append(r)
                lat = r["latency_ms"]
                print(f"{args.protocol} {conns:>3} connections x window {window:<3} "
                      f"{r['tps']:>10,.0f} TPS   p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms"
                      f"  p99.9 {lat['p99.9']:.3f} ms   approved "
                      f"{100 * r['codes'].get('00', 0) / max(r['completed'], 1):.1f}%",
                      flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
