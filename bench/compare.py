"""onecard against its peers, end to end, in one run on this machine: each server pinned to
core 0 and driven from core 1 with the same connection count and pipelining window.

  (a) onecard: ISO 8583 purchases, MACs, durable group commit (synchronous=FULL);
  (b) Redis (Debian's redis-server, no persistence at all) doing the same conditional debit
      per request as a Lua script (EVALSHA), driven by redis-benchmark;
  (c) a straightforward Python switch (bench/naive_switch.py: asyncio streams, pyiso8583,
      dicts, a commit per transaction);
  (d) a bare uvloop server that only frames and echoes the bytes (bench/echo_server.py).

    python -m onecard.bench.compare [--connections 64] [--window 32] [--duration 10]
                                    [--repeat 3] [--skip naive]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from onecard.bench.e2e import _pin

DEBIT_LUA = ("local b = tonumber(redis.call('GET', KEYS[1]) or '0') "
             "local a = tonumber(ARGV[1]) "
             "if b >= a then return redis.call('DECRBY', KEYS[1], a) end return -1")
KEYSPACE = 100_000


def start_server(cmd: list[str], ready: str) -> tuple[subprocess.Popen, int]:
    """Start a server pinned to core 0; wait for its ``ready`` line; its ISO 8583 port."""
    proc = subprocess.Popen([*_pin(0), *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None              # stdout=PIPE
    port = None
    for line in proc.stdout:
        m = re.search(r"listening iso8583 [\d.]+:(\d+)", line)
        if m:
            port = int(m.group(1))
        if line.strip().endswith(ready):
            assert port is not None, f"{cmd[0]} was ready before it said where it listens"
            return proc, port
    raise RuntimeError(f"{cmd[0]} did not start")


def stop_server(proc: subprocess.Popen) -> None:
    """Ask a server to stop; kill it if it has not within a minute."""
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _load(port: int, data_dir: Path, args, extra: list[str], out: Path) -> dict:
    cmd = [*_pin(1), sys.executable, "-m", "onecard.switch.cli", "load", "--port", str(port),
           "--connections", str(args.connections), "--window", str(args.window),
           "--duration", str(args.duration), "--data-dir", str(data_dir), "--balance-share",
           "0", "--json", str(out), *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = json.loads(out.read_text())
    return {"tps": r["tps"], "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"]}


def run_redis(args) -> dict | None:
    if shutil.which("redis-server") is None or shutil.which("redis-benchmark") is None:
        print("compare: redis-server not found (apt-get install redis-server); skipping Redis",
              file=sys.stderr)
        return None
    port = "6391"
    server = subprocess.Popen([*_pin(0), "redis-server", "--port", port, "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            ok = subprocess.run(["redis-cli", "-p", port, "PING"], capture_output=True,
                                text=True).stdout.strip() == "PONG"
            if ok:
                break
            time.sleep(0.05)
        sha = subprocess.run(["redis-cli", "-p", port, "SCRIPT", "LOAD", DEBIT_LUA],
                             capture_output=True, text=True, check=True).stdout.strip()
        # Opening balances for every key redis-benchmark will draw (card:000000000000 ...).
        feed = "".join(f"SET card:{i:012d} 1000000\r\n" for i in range(KEYSPACE))
        subprocess.run(["redis-cli", "-p", port, "--pipe"], input=feed, text=True, check=True,
                       capture_output=True)
        total = int(max(args.duration, 1) * 250_000)
        out = subprocess.run([*_pin(1), "redis-benchmark", "-p", port, "-c",
                              str(args.connections), "-P", str(args.window), "-n", str(total),
                              "-r", str(KEYSPACE), "--csv", "EVALSHA", sha, "1",
                              "card:__rand_int__", "100"], capture_output=True, text=True,
                             check=True).stdout
        row = list(csv.DictReader(io.StringIO(out)))[-1]
        return {"tps": float(row["rps"]), "p50_ms": float(row["p50_latency_ms"]),
                "p99_ms": float(row["p99_latency_ms"])}
    finally:
        subprocess.run(["redis-cli", "-p", port, "SHUTDOWN", "NOSAVE"], capture_output=True)
        server.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--cards", type=int, default=100_000)
    p.add_argument("--skip", nargs="*", default=[], choices=("redis", "naive", "echo"))
    p.add_argument("--repeat", type=int, default=3, help="rounds (medians are reported)")
    p.add_argument("--json")
    args = p.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "data"
        subprocess.run([sys.executable, "-m", "onecard.switch.cli", "demo-data", "--data-dir",
                        str(data), "--cards", str(args.cards)], check=True,
                       stderr=subprocess.DEVNULL)
        pristine = tmp / "pristine"
        shutil.copytree(data, pristine)

        def fresh() -> Path:
            shutil.rmtree(data, ignore_errors=True)
            shutil.copytree(pristine, data)
            return data

        targets = [
            ("onecard", [sys.executable, "-m", "onecard.switch.cli", "serve", "--data-dir",
                         "{data}", "--iso8583-port", "0", "--native-port", "0", "--http-port",
                         "0"], "onecard: ready", []),
            ("naive", [sys.executable, "-m", "onecard.bench.naive_switch", "--data-dir",
                       "{data}", "--port", "0"], "naive switch: ready", []),
            ("echo", [sys.executable, "-m", "onecard.bench.echo_server", "--port", "0"],
             "echo: ready", ["--no-signon"]),
        ]
        runs: dict[str, list[dict]] = {}
        # Rounds interleave the targets so that a noisy neighbour hits all of them alike;
        # the medians are reported.
        for _ in range(args.repeat):
            for name, cmd, ready, extra in targets:
                if name in args.skip:
                    continue
                d = fresh()
                proc, port = start_server([c.replace("{data}", str(d)) for c in cmd], ready)
                try:
                    runs.setdefault(name, []).append(_load(port, d, args, extra,
                                                           tmp / f"{name}.json"))
                finally:
                    stop_server(proc)
                _report(name, runs[name][-1])
            if "redis" not in args.skip:
                r = run_redis(args)
                if r:
                    runs.setdefault("redis", []).append(r)
                    _report("redis", r)
        for name, rs in runs.items():
            results[name] = {key: statistics.median(r[key] for r in rs) for key in rs[0]}
            results[name]["runs"] = rs
    print(f"\nmedians of {args.repeat} round(s):")
    for name, r in results.items():
        _report(name, r)
    one = results["onecard"]["tps"]
    print(f"\nonecard, {args.connections} connections x window {args.window}, durable:")
    for peer in ("redis", "naive", "echo"):
        if peer in results:
            print(f"  {one / results[peer]['tps']:6.2f}x the TPS of {peer}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def _report(name: str, r: dict) -> None:
    print(f"{name:8} {r['tps']:>12,.0f} TPS   p50 {r['p50_ms']:8.3f} ms   p99 "
          f"{r['p99_ms']:8.3f} ms", flush=True)


if __name__ == "__main__":
    main()
