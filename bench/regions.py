"""One switch owning every province vs two regional switches over NATS, in the same run:
throughput and latency of local and forwarded requests (issue 15).

    python -m onecard.bench.regions                       # 20k cards, 10 s per measurement
    python -m onecard.bench.regions --duration 20 --json regions.json

Both set-ups get the same load from ``onecard load``: ``--local`` ISO 8583 POS connections
buying with cards of their own province, and ``--foreign`` connections at the same Shanghai
terminals buying with Jiangsu (32) cards (about 10% of the requests with the defaults). On
the single switch every request is decided locally; with regions, "sh" owns every province but
Jiangsu and "js" owns Jiangsu, so the foreign connections' requests are forwarded sh -> js and
back over NATS. The figure the issue asks for is forwarded p99 minus local p99, measured here
in the same run as the single switch's, on the same (shared, 2-core) machine: every process of
both set-ups (NATS, three switches, two load generators) shares the cores, so the ratios
matter more than the absolute figures.

Also measured: with the issuer's switch stopped (NATS says at once that nobody serves its
subject), how fast the acquirer answers a forwarded purchase (91) and decides a bus tap by
stand-in (approved within Jiangsu's published limits, then 91 once a card's day is used up;
the codes are reported), and the NATS request-reply
round trip alone (an echo responder on the same server,
the same payload size as a forwarded batch of one), the floor under a forwarded request's
extra latency on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from onecard.bench.e2e import LOAD_GRACE_S, start_switch
from onecard.protocols import forward
from onecard.switch import demo
from onecard.switch.region import nats_server, route_cli
from onecard.switch.region.split import split_data_set

JS, SH = 32, 31
ECHO_ROUNDS = 2000


def _drain(proc: subprocess.Popen) -> None:
    """Read a switch's output after it is ready: a pipe nobody reads fills, and then the
    switch blocks on its next log line (a stopped issuer makes the acquirer log)."""
    def run() -> None:
        for _ in proc.stdout:
            pass

    threading.Thread(target=run, daemon=True).start()


def _progress(msg: str) -> None:
    print(f"regions: {msg}", file=sys.stderr, flush=True)


def _provinces(data_dir: Path) -> list[int]:
    import sqlite3

    conn = sqlite3.connect(f"file:{data_dir / 'onecard.db'}?mode=ro", uri=True)
    try:
        return [p for (p,) in conn.execute("SELECT DISTINCT province FROM regions "
                                           "ORDER BY province")]
    finally:
        conn.close()


def _region_config(work: Path, name: str, urls: list[str]) -> Path:
    path = work / f"{name}.toml"
    quoted = ", ".join(f'"{u}"' for u in urls)
    path.write_text("[server]\nlatency_budget_ms = 0\n"
                    f'[region]\nname = "{name}"\nnats_urls = [{quoted}]\n')
    return path


def _load(port: int, data_dir: Path, connections: int, window: int, duration_s: float,
          out: Path, seed: int, extra: tuple[str, ...] = (),
          protocol: str = "iso8583") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "onecard.switch.cli", "load", "--protocol", protocol,
           "--port", str(port), "--connections", str(connections), "--window", str(window),
           "--duration", str(duration_s), "--data-dir", str(data_dir), "--balance-share", "0",
           "--seed", str(seed), "--json", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, out: Path, duration_s: float) -> dict:
    _, err = proc.communicate(timeout=duration_s + LOAD_GRACE_S)
    if proc.returncode != 0:
        raise SystemExit(f"onecard load failed:\n{err.strip()}")
    return json.loads(out.read_text())


def measure(name: str, port: int, acquirer_dir: Path, issuer_dir: Path, args,
            work: Path) -> dict:
    """Local and foreign connections at once against one switch's ISO 8583 port."""
    _progress(f"{name}: {args.local} local + {args.foreign} foreign connections, window "
              f"{args.window}, {args.duration:g} s")
    local_out, foreign_out = work / f"{name}-local.json", work / f"{name}-foreign.json"
    local = _load(port, acquirer_dir, args.local, args.window, args.duration, local_out, 1,
                  ("--terminal-province", str(SH)))
    foreign = _load(port, acquirer_dir, args.foreign, args.window, args.duration, foreign_out,
                    2, ("--card-province", str(JS), "--cards-data-dir", str(issuer_dir),
                        "--terminal-province", str(SH)))
    return {"local": _finish(local, local_out, args.duration),
            "foreign": _finish(foreign, foreign_out, args.duration)}


def issuer_down(issuer: subprocess.Popen, ports: dict[str, int], dirs: dict[str, Path], args,
                work: Path) -> dict:
    """The issuer's switch stopped (NATS up: no responder, so no waiting for the timeout):
    how long the acquirer takes to answer forwarded purchases (91) and to decide bus taps by
    stand-in."""
    issuer.terminate()
    issuer.wait(60)
    duration_s = min(args.duration, 3.0)
    foreign = ("--card-province", str(JS), "--cards-data-dir", str(dirs["js"]),
               "--terminal-province", str(SH))
    _progress(f"issuer down: {args.foreign} foreign connections, purchases, {duration_s:g} s")
    out = work / "issuer-down.json"
    proc = _load(ports["iso8583"], dirs["sh"], args.foreign, args.window, duration_s, out, 3,
                 foreign)
    result = _finish(proc, out, duration_s)
    _progress(f"issuer down: {args.foreign} foreign connections, bus taps (stand-in), "
              f"{duration_s:g} s")
    out = work / "stand-in.json"
    proc = _load(ports["native"], dirs["sh"], args.foreign, args.window, duration_s, out, 4,
                 (*foreign, "--bus-share", "1", "--verify-share", "0"), protocol="native")
    return {"purchases": result, "taps": _finish(proc, out, duration_s)}


async def _echo_round_trips(url: str, rounds: int) -> np.ndarray:
    """NATS request-reply alone: the floor under forwarding's extra latency."""
    import nats

    nc = await nats.connect(url)
    try:
        async def echo(msg) -> None:
            await msg.respond(msg.data)

        await nc.subscribe("onecard.bench.echo", cb=echo)
        payload = bytes(forward.REQUEST.itemsize)
        out = np.empty(rounds, dtype=np.int64)
        for i in range(rounds):
            start = time.perf_counter_ns()
            await nc.request("onecard.bench.echo", payload, timeout=5)
            out[i] = (time.perf_counter_ns() - start) // 1000
        return out
    finally:
        await nc.close()


def _setup(work: Path, args) -> dict[str, Path]:
    dirs = {"all": work / "all" / "data", "sh": work / "sh" / "data", "js": work / "js" / "data"}
    _progress(f"demo data: {args.cards:,} cards")
    demo.generate(dirs["all"], cards=args.cards, seed=args.seed, progress=lambda _: None)
    provinces = _provinces(dirs["all"])
    for name, owns in (("sh", [p for p in provinces if p != JS]), ("js", [JS])):
        _progress(f"region split: {name} owns {','.join(map(str, owns))}")
        dirs[name].parent.mkdir(parents=True, exist_ok=True)
        split_data_set(dirs["all"], dirs[name], owns)
    return dirs


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="onecard-regions-") as tmp:
        work = Path(tmp)
        dirs = _setup(work, args)
        procs: list[subprocess.Popen] = []
        with nats_server.start_single(work / "nats") as cluster:
            cluster.wait_ready()
            others = ",".join(str(p) for p in _provinces(dirs["all"]) if p != JS)
            route = argparse.Namespace(region_command="route", nats=cluster.urls[0],
                                       replicas=1, set=[f"{others}=sh", f"{JS}=js"])
            assert route_cli.run(route) == 0
            try:
                single, ports = start_switch(dirs["all"], args.cards, None)
                procs.append(single)
                result = {"single": measure("single", ports["iso8583"], dirs["all"],
                                            dirs["all"], args, work)}
                single.terminate()
                single.wait(60)
                regional = {}
                for name in ("js", "sh"):
                    proc, ports = start_switch(dirs[name], args.cards, None,
                                               config=_region_config(work, name, cluster.urls))
                    procs.append(proc)
                    regional[name] = proc
                    _drain(proc)
                result["regions"] = measure("regions", ports["iso8583"], dirs["sh"],
                                            dirs["js"], args, work)
                result["issuer_down"] = issuer_down(regional["js"], ports, dirs, args, work)
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.terminate()
                        proc.wait(60)
            _progress(f"NATS request-reply alone: {ECHO_ROUNDS:,} round trips")
            echo = asyncio.run(_echo_round_trips(cluster.urls[0], ECHO_ROUNDS))
        result["nats_echo_ms"] = {"p50": float(np.percentile(echo, 50)) / 1000,
                                  "p99": float(np.percentile(echo, 99)) / 1000}
        return result


def report(r: dict) -> str:
    lines = [f"{'set-up':<10}{'requests':<10}{'TPS':>9}{'p50 ms':>9}{'p99 ms':>9}"
             f"{'p99.9 ms':>10}  codes"]
    for setup in ("single", "regions"):
        for kind in ("local", "foreign"):
            x = r[setup][kind]
            lat = x["latency_ms"]
            lines.append(f"{setup:<10}{kind:<10}{x['tps']:>9,.0f}{lat['p50']:>9.2f}"
                         f"{lat['p99']:>9.2f}{lat.get('p99.9', float('nan')):>10.2f}  "
                         f"{x['codes']}")
    reg = r["regions"]
    total = reg["local"]["tps"] + reg["foreign"]["tps"]
    single_total = r["single"]["local"]["tps"] + r["single"]["foreign"]["tps"]
    diff = reg["foreign"]["latency_ms"]["p99"] - reg["local"]["latency_ms"]["p99"]
    lines += [
        f"forwarded share of requests (regions): {reg['foreign']['tps'] / total:.1%}",
        f"total TPS regions / single: {total / single_total:.2f}",
        f"forwarded p99 - local p99 (regions): {diff:.2f} ms (aim <= 2 ms)",
        *(f"issuer down, forwarded {what} answered in: p50 {x['latency_ms']['p50']:.2f} ms, "
          f"p99 {x['latency_ms']['p99']:.2f} ms, codes {x['codes']}"
          for what, x in (("purchases", r["issuer_down"]["purchases"]),
                          ("bus taps (stand-in)", r["issuer_down"]["taps"]))),
        f"NATS request-reply alone: p50 {r['nats_echo_ms']['p50']:.3f} ms, "
        f"p99 {r['nats_echo_ms']['p99']:.3f} ms",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cards", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=20241101)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--local", type=int, default=9, help="connections with local cards")
    p.add_argument("--foreign", type=int, default=1, help="connections with Jiangsu cards")
    p.add_argument("--window", type=int, default=4, help="requests in flight per connection")
    p.add_argument("--json", help="write the figures as JSON here")
    args = p.parse_args(argv)
    if not (1 <= args.duration <= 600 and 1 <= args.local <= 256 and 1 <= args.foreign <= 256
            and 1 <= args.window <= 64 and 1000 <= args.cards <= 10_000_000):
        raise SystemExit("regions: --duration 1..600 s, --local/--foreign 1..256, --window "
                         "1..64, --cards 1000..10M")
    result = run(args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
