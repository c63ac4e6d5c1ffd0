"""One switch owning every province vs three (or two) regional switches over NATS, in the
same run: throughput and latency of local and forwarded requests (issue 15).

    python -m onecard.bench.regions                       # 20k cards, 10 s per measurement
    python -m onecard.bench.regions --regions 2 --duration 20 --json regions.json

Both set-ups get the same load from ``onecard load``: ``--local`` ISO 8583 POS connections
buying with cards of their own province, and per issuing region ``--foreign`` connections at
the same Shanghai terminals buying with its cards: Jiangsu (32) and Zhejiang (33) cards with
three regions, Jiangsu's with two (about 10% of the requests with the defaults). On the
single switch every request is decided locally; with regions, "sh" owns every other province,
"js" Jiangsu and "zj" Zhejiang, so the foreign connections' requests are forwarded sh -> js or
sh -> zj and back over NATS. The figure the issue asks for is forwarded p99 minus local p99,
measured here in the same run as the single switch's, on the same (shared, 2-core) machine:
every process of both set-ups (NATS, the switches, the load generators) shares the cores, so
the ratios matter more than the absolute figures.

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

from onecard.bench.e2e import LOAD_GRACE_S, metric_samples, start_switch
from onecard.protocols import forward
from onecard.switch import demo
from onecard.switch.cluster import nats as nats_server
from onecard.switch.commands import route as route_cli
from onecard.switch.commands.split import split_data_set

JS, SH = 32, 31
ISSUERS = {"js": JS, "zj": 33}               # the regions that own one province each
ECHO_ROUNDS = 2000


def _drain(proc: subprocess.Popen) -> None:
    """Read a switch's output after it is ready: a pipe nobody reads fills, and then the
    switch blocks on its next log line (a stopped issuer makes the acquirer log)."""
    def run() -> None:
        assert proc.stdout is not None          # started with stdout=PIPE
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


def measure(name: str, port: int, acquirer_dir: Path, issuer_dirs: dict[str, Path], args,
            work: Path) -> dict:
    """Local connections and each issuer's foreign connections at once against one switch's
    ISO 8583 port: {"local": result, issuer: result, ...}."""
    _progress(f"{name}: {args.local} local + {args.foreign} foreign connections per issuer "
              f"({', '.join(issuer_dirs)}), window {args.window}, {args.duration:g} s")
    outs = {"local": work / f"{name}-local.json"}
    procs = {"local": _load(port, acquirer_dir, args.local, args.window, args.duration,
                            outs["local"], 1, ("--terminal-province", str(SH)))}
    for seed, (issuer, issuer_dir) in enumerate(issuer_dirs.items(), start=2):
        outs[issuer] = work / f"{name}-{issuer}.json"
        procs[issuer] = _load(port, acquirer_dir, args.foreign, args.window, args.duration,
                              outs[issuer], seed,
                              ("--card-province", str(ISSUERS[issuer]), "--cards-data-dir",
                               str(issuer_dir), "--terminal-province", str(SH)))
    return {what: _finish(proc, outs[what], args.duration) for what, proc in procs.items()}


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


def _quantile_ms(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile: linear within the bucket that holds the rank."""
    total = buckets[-1][1] if buckets else 0.0
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= q * total and count > lower_count:
            if le == float("inf"):
                return lower_le * 1000
            return (lower_le + (le - lower_le) * (q * total - lower_count)
                    / (count - lower_count)) * 1000
        lower_le, lower_count = le, count
    return 0.0


def _commit_ms(http_port: int) -> dict[str, float]:
    """A switch's group-commit latency so far, p50 and p99, from its histogram."""
    buckets = sorted((float(s.labels["le"]), s.value)
                     for s in metric_samples(http_port, "onecard_commit_latency_seconds")
                     if s.name.endswith("_bucket"))
    return {"p50": _quantile_ms(buckets, 0.5), "p99": _quantile_ms(buckets, 0.99)}


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


def _issuers(args) -> list[str]:
    return list(ISSUERS)[:args.regions - 1]


def _owners(provinces: list[int], args) -> dict[str, list[int]]:
    """Each region's provinces: one each for the issuers, every other one for "sh"."""
    issued = {ISSUERS[name]: name for name in _issuers(args)}
    return {"sh": [p for p in provinces if p not in issued],
            **{name: [p] for p, name in issued.items()}}


def _setup(work: Path, args) -> dict[str, Path]:
    dirs = {name: work / name / "data" for name in ("all", "sh", *_issuers(args))}
    _progress(f"demo data: {args.cards:,} cards")
    demo.generate(dirs["all"], cards=args.cards, seed=args.seed, progress=lambda _: None)
    for name, owns in _owners(_provinces(dirs["all"]), args).items():
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
            owners = _owners(_provinces(dirs["all"]), args)
            route = argparse.Namespace(
                region_command="route", nats=cluster.urls[0], replicas=1,
                set=[f"{','.join(map(str, owns))}={name}" for name, owns in owners.items()])
            assert route_cli.run(route) == 0
            try:
                single, ports = start_switch(dirs["all"], args.cards, None)
                procs.append(single)
                result = {"single": measure("single", ports["iso8583"], dirs["all"],
                                            dict.fromkeys(_issuers(args), dirs["all"]), args,
                                            work)}
                single.terminate()
                single.wait(60)
                regional, http = {}, {}
                for name in (*_issuers(args), "sh"):       # "sh" last: its ports are used
                    proc, ports = start_switch(dirs[name], args.cards, None,
                                               config=_region_config(work, name, cluster.urls))
                    procs.append(proc)
                    regional[name], http[name] = proc, ports["http"]
                    _drain(proc)
                result["regions"] = measure("regions", ports["iso8583"], dirs["sh"],
                                            {n: dirs[n] for n in _issuers(args)}, args, work)
                result["commit_ms"] = {name: _commit_ms(port) for name, port in http.items()}
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
    lines = [f"{'set-up':<10}{'requests':<14}{'TPS':>9}{'p50 ms':>9}{'p99 ms':>9}"
             f"{'p99.9 ms':>10}  codes"]
    for setup in ("single", "regions"):
        for kind, x in r[setup].items():
            lat = x["latency_ms"]
            label = kind if kind == "local" else (
                f"{kind} cards" if setup == "single" else f"-> {kind}")
            lines.append(f"{setup:<10}{label:<14}{x['tps']:>9,.0f}{lat['p50']:>9.2f}"
                         f"{lat['p99']:>9.2f}{lat.get('p99.9', float('nan')):>10.2f}  "
                         f"{x['codes']}")
    reg = r["regions"]
    total = sum(x["tps"] for x in reg.values())
    single_total = sum(x["tps"] for x in r["single"].values())
    issuers = [k for k in reg if k != "local"]
    local_p99 = reg["local"]["latency_ms"]["p99"]
    lines += [
        f"forwarded share of requests (regions): "
        f"{sum(reg[k]['tps'] for k in issuers) / total:.1%}",
        f"total TPS regions / single: {total / single_total:.2f}",
        *(f"forwarded p99 - local p99 (regions, -> {k}): "
          f"{reg[k]['latency_ms']['p99'] - local_p99:.2f} ms (aim <= 2 ms)" for k in issuers),
        *(f"issuer down, forwarded {what} answered in: p50 {x['latency_ms']['p50']:.2f} ms, "
          f"p99 {x['latency_ms']['p99']:.2f} ms, codes {x['codes']}"
          for what, x in (("purchases", r["issuer_down"]["purchases"]),
                          ("bus taps (stand-in)", r["issuer_down"]["taps"]))),
        f"NATS request-reply alone: p50 {r['nats_echo_ms']['p50']:.3f} ms, "
        f"p99 {r['nats_echo_ms']['p99']:.3f} ms",
    ]
    # What a forwarded request needs over a local one, whatever the code: one NATS round trip
    # and the issuer's group commit before its answer may leave.
    for k in issuers:
        floor = r["nats_echo_ms"]["p99"] + r["commit_ms"][k]["p99"]
        gap = reg[k]["latency_ms"]["p99"] - local_p99
        lines.append(f"floor under forwarded p99 - local p99 (-> {k}): NATS request-reply p99 "
                     f"{r['nats_echo_ms']['p99']:.2f} + {k}'s commit p99 "
                     f"{r['commit_ms'][k]['p99']:.2f} = {floor:.2f} ms; measured / floor "
                     f"{gap / floor:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cards", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=20241101)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--local", type=int, default=9, help="connections with local cards")
    p.add_argument("--regions", type=int, default=3, choices=(2, 3),
                   help="regional switches: sh and js, and zj with 3")
    p.add_argument("--foreign", type=int, default=1,
                   help="connections with each issuing region's cards")
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
