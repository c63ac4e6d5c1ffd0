"""The issuer killed under load: advices made while it is down against advices drained once it
is back, as a ratio (issue 27, "advices never fall behind").

    python -m onecard.bench.advices                   # 20k cards; kill at 15 s, back at 30 s
    python -m onecard.bench.advices --duration 60 --kill-at 15 --restart-at 30 --json out.json

Two regional switches on `onecard region split` parts of one demo data set, "sh" owning every
province but Jiangsu, "js" Jiangsu, over a 3-node NATS cluster (R3 streams, fsync on every
write), as in the issue's test. `onecard load` drives Shanghai terminals with Jiangsu cards:
ISO 8583 purchases (`--purchases` connections) and native bus taps (`--taps` connections),
for `--duration` seconds. "js" is killed (SIGKILL) at `--kill-at` and started again at
`--restart-at`: meanwhile "sh" answers the purchases 91 with a reversal advice each and stands
in for the taps with a stand-in advice each (91 once a card's day is used up).

Sampled every 50 ms from both switches' /metrics:
- made per second while the issuer is down: sh's `onecard_advices_queued_total` from the kill
  until js is ready again, over that time;
- drained per second once it is back: what js applied from ready until it has applied
  everything sh stored (and sh has nothing left to store), over that time;
- their ratio (>= 1: the backlog never grows once the issuer is back, whatever the outage),
  sh's largest backlog waiting for the stream, and how many advices a stream message and a
  core call carried.
Every process shares the machine's cores, so the ratio matters more than the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from math import inf
from pathlib import Path

from onecard.bench.e2e import metric_samples, start_switch
from onecard.bench.regions import (
    JS,
    SH,
    _drain,
    _finish,
    _load,
    _owners,
    _progress,
    _provinces,
    _setup,
)
from onecard.switch.cluster import nats as nats_server
from onecard.switch.commands import route as route_cli

SAMPLE_S = 0.05
DRAIN_TIMEOUT_S = 300.0
COUNTERS = ("queued", "published", "messages_published", "pending", "applied", "apply_calls")


def _config(work: Path, name: str, urls: list[str]) -> Path:
    path = work / f"{name}-advices.toml"
    quoted = ", ".join(f'"{u}"' for u in urls)
    path.write_text("[server]\nlatency_budget_ms = 0\n"
                    f'[region]\nname = "{name}"\nnats_urls = [{quoted}]\n'
                    "routing_replicas = 3\n")
    return path


def advice_counters(http_port: int | None) -> dict[str, float]:
    """A switch's advice metrics now (zeros for a switch not running)."""
    out = dict.fromkeys(COUNTERS, 0.0)
    if http_port is None:
        return out
    found = set()
    try:
        for name in COUNTERS:
            for s in metric_samples(http_port, f"onecard_advices_{name}"):
                out[name] = s.value
                found.add(name)
    except OSError:                              # killed between two samples
        pass
    if "queued" not in found:
        # A switch from before the counter (to measure the old code the same way): what
        # it made is what it stored plus what waits.
        out["queued"] = out["published"] + out["pending"]
    return out


class Sampler(threading.Thread):
    """Both switches' advice metrics every SAMPLE_S: [(t, sh counters, js counters)]."""

    def __init__(self, sh_http: int) -> None:
        super().__init__(daemon=True)
        self.sh_http = sh_http
        self.js_http: int | None = None          # None while js is down
        self.samples: list[tuple[float, dict, dict]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            js_http = self.js_http
            self.samples.append((t, advice_counters(self.sh_http), advice_counters(js_http)))
            self.stop.wait(max(0.0, SAMPLE_S - (time.monotonic() - t)))

    def last(self) -> tuple[float, dict, dict]:
        while not self.samples:
            time.sleep(SAMPLE_S)
        return self.samples[-1]


def _loads(dirs: dict[str, Path], ports: dict[str, int], args, work: Path) -> list:
    """Shanghai terminals with Jiangsu cards: purchases (ISO 8583) and bus taps (native)."""
    foreign = ("--card-province", str(JS), "--cards-data-dir", str(dirs["js"]),
               "--terminal-province", str(SH))
    runs = []
    if args.purchases:
        out = work / "purchases.json"
        runs.append(("purchases", out, _load(ports["iso8583"], dirs["sh"], args.purchases,
                                             args.window, args.duration, out, 5, foreign)))
    if args.taps:
        out = work / "taps.json"
        runs.append(("taps", out, _load(ports["native"], dirs["sh"], args.taps, args.window,
                                        args.duration, out, 6,
                                        (*foreign, "--bus-share", "1", "--verify-share", "0"),
                                        protocol="native")))
    return runs


def _outage(js: subprocess.Popen, sampler: Sampler, dirs: dict[str, Path], config: Path,
            args, start: float) -> tuple[subprocess.Popen, dict[str, float]]:
    """Kill js at kill_at, start it again at restart_at: the new process and the moments."""
    time.sleep(max(0.0, start + args.kill_at - time.monotonic()))
    before = sampler.last()[2]
    js.kill()
    js.wait(60)
    killed = time.monotonic()
    sampler.js_http = None
    _progress(f"js killed at {killed - start:.1f} s (it had applied {before['applied']:.0f})")
    time.sleep(max(0.0, start + args.restart_at - time.monotonic()))
    restarted = time.monotonic()
    js, ports = start_switch(dirs["js"], args.cards, None, config=config)
    _drain(js)
    ready = time.monotonic()
    sampler.js_http = ports["http"]
    _progress(f"js started again at {restarted - start:.1f} s, ready at {ready - start:.1f} s")
    return js, {"killed": killed, "restarted": restarted, "ready": ready,
                "applied_before": before["applied"]}


def _drained(sampler: Sampler, applied_before: float, after: float) -> tuple[float, dict]:
    """Wait (bounded) until js has applied what sh stored and sh holds nothing back: the
    first such moment after ``after`` and js's counters then. Advices js applied before the
    kill are not applied again (unless fetched and not acknowledged: a few, counted again)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    seen = 0
    while time.monotonic() < deadline:
        samples = sampler.samples
        for t, sh, js in samples[seen:]:
            if (t > after and sh["pending"] == 0 and js["applied"] > 0
                    and js["applied"] >= sh["published"] - applied_before):
                return t, js
        seen = len(samples)
        time.sleep(SAMPLE_S)
    raise SystemExit(f"advices: not drained within {DRAIN_TIMEOUT_S:g} s")


def _figures(sampler: Sampler, at: dict[str, float], drained_t: float, js_end: dict,
             start: float) -> dict:
    def sh_at(t: float) -> dict:
        return next(sh for ts, sh, _ in sampler.samples if ts >= t)

    down_s = at["ready"] - at["killed"]
    made = sh_at(at["ready"])["queued"] - sh_at(at["killed"])["queued"]
    drain_s = drained_t - at["ready"]
    sh_end = sh_at(drained_t)
    produced, drained = made / down_s, js_end["applied"] / drain_s
    return {
        "kill_s": at["killed"] - start, "ready_s": at["ready"] - start,
        "drained_s": drained_t - start, "down_s": down_s, "drain_s": drain_s,
        "made_while_down": made, "produced_per_s": produced,
        "applied_after_return": js_end["applied"], "drained_per_s": drained,
        "ratio": drained / produced if produced else float("inf"),
        "pending_max": max(sh["pending"] for _, sh, _ in sampler.samples),
        # 0: not counted by this version of the switch
        "advices_per_message": sh_end["published"] / (sh_end["messages_published"] or inf),
        "advices_per_core_call": js_end["applied"] / (js_end["apply_calls"] or inf),
    }


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="onecard-advices-") as tmp:
        work = Path(tmp)
        args.regions = 2
        dirs = _setup(work, args)
        procs: list[subprocess.Popen] = []
        with nats_server.start_cluster(work / "nats", nodes=3) as cluster:
            cluster.wait_ready()
            owners = _owners(_provinces(dirs["all"]), args)
            route = argparse.Namespace(
                region_command="route", nats=cluster.urls[0], replicas=3,
                set=[f"{','.join(map(str, owns))}={name}" for name, owns in owners.items()])
            assert route_cli.run(route) == 0
            configs = {name: _config(work, name, cluster.urls) for name in ("sh", "js")}
            try:
                js, _ = start_switch(dirs["js"], args.cards, None, config=configs["js"])
                procs.append(js)
                _drain(js)
                sh, ports = start_switch(dirs["sh"], args.cards, None, config=configs["sh"])
                procs.append(sh)
                _drain(sh)
                return _measure(js, ports, dirs, configs["js"], args, work, procs)
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.terminate()
                        proc.wait(60)


def _measure(js: subprocess.Popen, ports: dict[str, int], dirs: dict[str, Path], config: Path,
             args, work: Path, procs: list) -> dict:
    sampler = Sampler(ports["http"])
    sampler.start()
    try:
        _progress(f"load: {args.purchases} purchase and {args.taps} tap connections with "
                  f"Jiangsu cards at Shanghai terminals, {args.duration:g} s; js killed at "
                  f"{args.kill_at:g} s, started again at {args.restart_at:g} s")
        start = time.monotonic()
        runs = _loads(dirs, ports, args, work)
        js, at = _outage(js, sampler, dirs, config, args, start)
        procs.append(js)
        drained_t, js_end = _drained(sampler, at["applied_before"], at["ready"])
        loads = {what: _finish(proc, out, args.duration) for what, out, proc in runs}
        figures = _figures(sampler, at, drained_t, js_end, start)
    finally:
        sampler.stop.set()
    figures["codes"] = {what: r["codes"] for what, r in loads.items()}
    return figures


def report(r: dict) -> str:
    return "\n".join([
        f"issuer down {r['down_s']:.1f} s (killed at {r['kill_s']:.1f} s, ready again at "
        f"{r['ready_s']:.1f} s): {r['made_while_down']:,.0f} advices made, "
        f"{r['produced_per_s']:,.0f}/s",
        f"back: {r['applied_after_return']:,.0f} applied in {r['drain_s']:.2f} s (drained at "
        f"{r['drained_s']:.1f} s): {r['drained_per_s']:,.0f}/s",
        f"drained / produced: {r['ratio']:.1f}",
        f"acquirer's largest backlog waiting for the stream: {r['pending_max']:,.0f}; "
        f"advices per stream message {r['advices_per_message']:.1f}, per core call at the "
        f"issuer {r['advices_per_core_call']:.1f}",
        *(f"{what}: codes {codes}" for what, codes in r["codes"].items()),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cards", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=20241101)
    p.add_argument("--duration", type=float, default=45.0, help="seconds of load")
    p.add_argument("--kill-at", type=float, default=15.0, help="seconds into the load")
    p.add_argument("--restart-at", type=float, default=30.0, help="seconds into the load")
    p.add_argument("--purchases", type=int, default=4, help="ISO 8583 connections")
    p.add_argument("--taps", type=int, default=2, help="native bus reader connections")
    p.add_argument("--window", type=int, default=8, help="requests in flight per connection")
    p.add_argument("--json", help="write the figures as JSON here")
    args = p.parse_args(argv)
    if not (0 < args.kill_at < args.restart_at < args.duration <= 600
            and 0 <= args.purchases <= 256 and 0 <= args.taps <= 256
            and args.purchases + args.taps > 0 and 1 <= args.window <= 64
            and 1000 <= args.cards <= 10_000_000):
        raise SystemExit("advices: 0 < --kill-at < --restart-at < --duration <= 600, "
                         "--purchases/--taps 0..256 (not both 0), --window 1..64, "
                         "--cards 1000..10M")
    result = run(args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
