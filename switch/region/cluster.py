"""``onecard cluster up --regions N --dir DIR``: regional switches on loopback, to try them and
to drive them with ``onecard load`` (issue 15, docs/regions.md).

Under DIR: ``demo`` (one demo data set with every province), ``nats/`` (a three-node NATS
cluster with JetStream), and per region ``<name>/`` holding its part of the demo data
(``onecard region split``), its configuration, log and pid file; ``regions.json`` says where
everything is. The routing table gives each region the provinces of one group of
``switch/regions.csv`` (Beijing-Tianjin-Hebei, the Yangtze River Delta, Guangdong with Hong
Kong and Macao); with fewer regions than groups the last region takes the rest. Every process
runs in a session of its own, so ``up`` returns and ``down`` stops them by their pid files."""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import sys
import time
import urllib.request
from pathlib import Path

from onecard.switch.cluster.procs import (
    HOST,
    ClusterError,
    alive,
    free_ports,
    log_tail,
    read_pid,
    spawn,
    stop_waves,
)

REGIONS_FILE = "regions.json"
NATS_NODES = 3
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
POLL_S = 0.2


def plan(count: int) -> dict[str, list[int]]:
    """Region name -> its provinces, from the groups of switch/regions.csv (in file order)."""
    groups: dict[str, list[int]] = {}
    with open(Path(__file__).parent.parent / "regions.csv", newline="") as f:
        for row in csv.DictReader(f):
            provinces = groups.setdefault(row["group"].lower(), [])
            if int(row["province"]) not in provinces:
                provinces.append(int(row["province"]))
    names = list(groups)
    if not 2 <= count <= len(names):
        raise ClusterError(f"--regions {count}: between 2 and {len(names)} (the province "
                           f"groups of switch/regions.csv: {', '.join(names)})")
    out = {name: groups[name] for name in names[:count - 1]}
    out[names[count - 1]] = [p for name in names[count - 1:] for p in groups[name]]
    return out


def _config(home: Path, name: str, urls: list[str], ports: list[int],
            latency_budget_ms: int | None, forward_timeout_ms: int | None) -> str:
    quoted = ", ".join(f'"{u}"' for u in urls)
    budget = "" if latency_budget_ms is None else f"latency_budget_ms = {latency_budget_ms}\n"
    timeout = "" if forward_timeout_ms is None else f"timeout_ms = {forward_timeout_ms}\n"
    return (f'data_dir = "{home / "data"}"\n\n[server]\nterminal_host = "{HOST}"\n'
            f"iso8583_port = {ports[0]}\nnative_port = {ports[1]}\nhttp_port = {ports[2]}\n"
            f"{budget}\n"
            f'[region]\nname = "{name}"\nnats_urls = [{quoted}]\nrouting_replicas = 3\n'
            f"{timeout}")


def _start_switch(home: Path, name: str, urls: list[str], latency_budget_ms: int | None,
                  forward_timeout_ms: int | None) -> dict:
    ports = free_ports(3)
    config = home / "onecard.toml"
    config.write_text(_config(home, name, urls, ports, latency_budget_ms, forward_timeout_ms))
    log_path = home / "switch.log"
    pid = spawn([sys.executable, "-m", "onecard.switch.cli", "serve", "--config", str(config)],
                log_path, home / "switch.pid").pid
    return {"home": str(home), "config": str(config), "log": str(log_path), "pid": pid,
            "iso8583_port": ports[0], "native_port": ports[1], "http_port": ports[2]}


def _wait_ready(switches: dict[str, dict], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = dict(switches)
    while waiting and time.monotonic() < deadline:
        for name, sw in list(waiting.items()):
            log_path = Path(sw["log"])
            if "onecard: ready" in log_path.read_text(errors="replace"):
                del waiting[name]
            elif not alive(sw["pid"]):
                raise ClusterError(f"region {name}'s switch exited at start: "
                                   f"{log_tail(log_path)}")
        time.sleep(POLL_S)
    if waiting:
        raise ClusterError(f"not ready after {timeout_s:.0f} s: {', '.join(waiting)}")


def up(directory: Path, count: int, cards: int, timeout_s: float = READY_TIMEOUT_S,
       latency_budget_ms: int | None = None, forward_timeout_ms: int | None = None) -> int:
    """``latency_budget_ms``: the switches' [server] latency_budget_ms (None: the default;
    0: no load shedding, for tests and benchmarks on shared machines); ``forward_timeout_ms``
    their [region] timeout_ms (None: the default)."""
    from onecard.switch import demo
    from onecard.switch.region import nats_server, route_cli
    from onecard.switch.region.split import split_data_set

    if forward_timeout_ms is not None and not 10 <= forward_timeout_ms <= 10_000:
        raise ClusterError(f"--forward-timeout-ms {forward_timeout_ms}: from 10 to 10000")
    regions = plan(count)
    directory = directory.resolve()
    if directory.exists() and any(directory.iterdir()):
        raise ClusterError(f"{directory} is not empty (a previous cluster? `onecard cluster "
                           "down --dir` it, then remove it)")
    nats_server.nats_server_binary()          # fail before anything starts
    directory.mkdir(parents=True, exist_ok=True)
    print(f"demo data set of {cards:,} cards", flush=True)
    demo.generate(directory / "demo", cards=cards, progress=lambda _: None)
    for name, owns in regions.items():
        (directory / name).mkdir(mode=0o700)
        split_data_set(directory / "demo", directory / name / "data", owns)
        print(f"region {name}: provinces {','.join(map(str, owns))}", flush=True)
    nats = nats_server.start_cluster(directory / "nats", nodes=NATS_NODES, timeout_s=timeout_s)
    try:
        nats.wait_ready(timeout_s)
        sets = [f"{','.join(map(str, owns))}={name}" for name, owns in regions.items()]
        asyncio.run(route_cli.publish(",".join(nats.urls), sets, replicas=3))
        switches = {name: _start_switch(directory / name, name, nats.urls, latency_budget_ms,
                                        forward_timeout_ms)
                    for name in regions}
        _write(directory, nats.urls, regions, switches)
        _wait_ready(switches, timeout_s)
    except BaseException:
        _stop(directory)
        raise
    _print(directory, regions, switches)
    return 0


def _write(directory: Path, urls: list[str], regions: dict, switches: dict) -> None:
    info = {"nats_urls": urls, "demo": str(directory / "demo"),
            "regions": {name: {"provinces": regions[name], **switches[name]}
                        for name in regions}}
    (directory / REGIONS_FILE).write_text(json.dumps(info, indent=1) + "\n")


def _print(directory: Path, regions: dict, switches: dict) -> None:
    print(f"NATS: {directory / 'nats'}; routing table: onecard region table --nats "
          f"{json.loads((directory / REGIONS_FILE).read_text())['nats_urls'][0]}")
    for name, sw in switches.items():
        home = Path(sw["home"])
        print(f"region {name}: iso8583 {HOST}:{sw['iso8583_port']} native "
              f"{HOST}:{sw['native_port']} http {HOST}:{sw['http_port']}  (log {sw['log']})")
        first = regions[name][0]
        print(f"  try  onecard load --port {sw['iso8583_port']} --data-dir {home / 'data'} "
              f"--terminal-province {first} --connections 4 --duration 10")
    # Another region's cards at the first region's terminals: forwarded (and answered as the
    # catalogue's acceptance rules say: cross-group purchases are 62 there, as on one switch).
    names = list(switches)
    a, b = switches[names[0]], switches[names[1]]
    print(f"  forwarded: onecard load --port {a['iso8583_port']} --data-dir "
          f"{Path(a['home']) / 'data'} --terminal-province {regions[names[0]][0]} "
          f"--card-province {regions[names[1]][0]} --cards-data-dir "
          f"{Path(b['home']) / 'data'} --connections 2 --duration 10")
    print("ready", flush=True)


def is_regions(directory: Path) -> bool:
    return (directory / REGIONS_FILE).exists()


def status(directory: Path) -> int:
    """Each region's switch: running and ready (/readyz); 0 when all are."""
    info = json.loads((directory / REGIONS_FILE).read_text())
    ok = True
    for name, r in info["regions"].items():
        pid = read_pid(Path(r["home"]) / "switch.pid")
        state = "stopped"
        if pid is not None and alive(pid):
            state = _readyz(r["http_port"])
        ok &= state == "ready"
        print(f"{name:8} {state:40} provinces {','.join(map(str, r['provinces']))}  "
              f"iso8583 {r['iso8583_port']}")
    print(f"nats: {', '.join(info['nats_urls'])}")
    return 0 if ok else 1


def _readyz(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=5) as r:
            return "ready" if r.status == 200 else f"not ready ({r.status})"
    except OSError as exc:
        return f"not ready ({getattr(exc, 'code', None) or exc})"


def down(directory: Path) -> int:
    stopped = _stop(directory.resolve())
    print(f"stopped {stopped} process group(s) under {directory}")
    return 0


def _stop(directory: Path) -> int:
    """The switches first (they finish their commits while NATS is there), then NATS."""
    return stop_waves(directory, [
        (sorted(directory.glob("*/switch.pid")), signal.SIGTERM, STOP_TIMEOUT_S),
        (sorted(directory.glob("nats/*/nats-server.pid")), signal.SIGTERM, STOP_TIMEOUT_S)])
