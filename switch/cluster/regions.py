"""``onecard cluster up --regions N --dir DIR``: regional switches on loopback, to try them and
to drive them with ``onecard load`` (issues 15 and 27, docs/regions.md).

Under DIR: ``demo`` (one demo data set with every province), ``nats/`` (a three-node NATS
cluster with JetStream), and per region ``<name>/`` holding its part of the demo data
(``onecard region split``), its configuration, log and pid file; ``regions.json`` says where
everything is. Which provinces each region owns is the layout (``--layout``):

- ``split`` (the default): the Yangtze River Delta's provinces on different switches (``sh``
  Shanghai and every province outside the delta, then ``js`` Jiangsu, ``zj`` Zhejiang, ``ah``
  Anhui, as many as asked). The delta's joint catalogue accepts each other's cards, so
  Jiangsu cards at Shanghai terminals are forwarded to ``js`` and approved there: the first
  thing a new user should see is an approved cross-region purchase and tap.
- ``groups``: one region per province group of ``switch/regions.csv`` (Beijing-Tianjin-Hebei,
  the delta, Guangdong with Hong Kong and Macao; with fewer regions than groups the last
  region takes the rest). No catalogue accepts another group's cards at these terminals,
  so every forwarded purchase and tap is refused ``62`` by its issuer: the layout for trying
  the refusals.

The operators of every switch are made before it starts and their tokens handed over once
here, all together (``switch/cluster/tokens.py``: on this terminal, or in one 0600 file);
never into a switch's log.
Every process runs in a session of its own, so ``up`` returns and ``down`` stops them by their
pid files."""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import shlex
import signal
import sys
import time
import urllib.request
from pathlib import Path

from onecard.switch.cluster import tokens
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
LAYOUTS = ("split", "groups")
# The split layout's group and its switches' names (pinyin initials, as in docs/regions.md).
SPLIT_GROUP = "yrd"
SPLIT_NAMES = {31: "sh", 32: "js", 33: "zj", 34: "ah"}
# Hong Kong and Macao have bank POS only (no gates), accepting Guangdong cards: no terminal
# there shows a forwarded purchase and tap together.
CROSS_BORDER = (81, 82)


def _groups() -> dict[str, list[int]]:
    """Province group (lower case) -> its provinces, in switch/regions.csv's order."""
    groups: dict[str, list[int]] = {}
    with open(Path(__file__).parent.parent / "regions.csv", newline="") as f:
        for row in csv.DictReader(f):
            provinces = groups.setdefault(row["group"].lower(), [])
            if int(row["province"]) not in provinces:
                provinces.append(int(row["province"]))
    return groups


def plan(count: int, layout: str = "split") -> dict[str, list[int]]:
    """Region name -> its provinces (see the module docstring for the layouts); a region's
    first province is the one its printed commands drive."""
    groups = _groups()
    if layout == "groups":
        names = list(groups)
        if not 2 <= count <= len(names):
            raise ClusterError(f"--regions {count}: between 2 and {len(names)} with --layout "
                               f"groups (the province groups of switch/regions.csv: "
                               f"{', '.join(names)})")
        out = {name: groups[name] for name in names[:count - 1]}
        out[names[count - 1]] = [p for name in names[count - 1:] for p in groups[name]]
        return out
    if layout != "split":
        raise ClusterError(f"--layout {layout}: one of {', '.join(LAYOUTS)}")
    delta = groups[SPLIT_GROUP]
    if not 2 <= count <= len(delta):
        raise ClusterError(f"--regions {count}: between 2 and {len(delta)} with --layout split "
                           f"(one switch per province of the {SPLIT_GROUP} group at most)")
    alone = delta[1:count]
    first = [delta[0]] + [p for g in groups.values() for p in g
                          if p != delta[0] and p not in alone]
    return {SPLIT_NAMES[delta[0]]: first, **{SPLIT_NAMES[p]: [p] for p in alone}}


def forwarding_pair(regions: dict[str, list[int]]) -> tuple[str, int, str, int] | None:
    """(acquiring region, its terminals' province, issuing region, its cards' province) for
    the first two provinces of one group on different switches, mainland both (gates and
    POS): their catalogues accept each other's cards, so forwarded requests are approved.
    None when every group is on one switch."""
    group_of = {p: name for name, ps in _groups().items() for p in ps}
    for (a, owns_a), (b, owns_b) in itertools.permutations(regions.items(), 2):
        for pa, pb in itertools.product(owns_a, owns_b):
            if group_of[pa] == group_of[pb] and not {pa, pb} & set(CROSS_BORDER):
                return a, pa, b, pb
    return None


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
                  forward_timeout_ms: int | None) -> tuple[dict, dict[str, str]]:
    """Start one region's switch; its ports and files, and its operators' new tokens."""
    ports = free_ports(3)
    config = home / "onecard.toml"
    config.write_text(_config(home, name, urls, ports, latency_budget_ms, forward_timeout_ms))
    # Before the switch starts: it makes no operators of its own then (its tokens would be
    # in a file in its data directory, not with the other switches').
    made = tokens.make_operators(config)
    log_path = home / "switch.log"
    pid = spawn([sys.executable, "-m", "onecard.switch.cli", "serve", "--config", str(config)],
                log_path, home / "switch.pid").pid
    return {"home": str(home), "config": str(config), "log": str(log_path), "pid": pid,
            "iso8583_port": ports[0], "native_port": ports[1], "http_port": ports[2]}, made


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
       latency_budget_ms: int | None = None, forward_timeout_ms: int | None = None,
       layout: str = "split") -> int:
    """``latency_budget_ms``: the switches' [server] latency_budget_ms (None: the default;
    0: no load shedding, for tests and benchmarks on shared machines); ``forward_timeout_ms``
    their [region] timeout_ms (None: the default); ``layout``: see the module docstring."""
    from onecard.switch import demo
    from onecard.switch.cluster import nats as nats_server
    from onecard.switch.commands import route as route_cli
    from onecard.switch.commands.split import split_data_set

    if forward_timeout_ms is not None and not 10 <= forward_timeout_ms <= 10_000:
        raise ClusterError(f"--forward-timeout-ms {forward_timeout_ms}: from 10 to 10000")
    regions = plan(count, layout)
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
        switches, made = {}, {}
        for name in regions:
            switches[name], made[name] = _start_switch(
                directory / name, name, nats.urls, latency_budget_ms, forward_timeout_ms)
        _write(directory, nats.urls, regions, switches)
        _wait_ready(switches, timeout_s)
    except BaseException:
        _stop(directory)
        raise
    _print(directory, regions, switches)
    tokens.show(made, {name: Path(sw["config"]) for name, sw in switches.items()},
                directory)
    print(f"stop with: onecard cluster down --dir {directory}")
    print("ready", flush=True)
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
        print(f"region {name}: iso8583 {HOST}:{sw['iso8583_port']} native "
              f"{HOST}:{sw['native_port']} http {HOST}:{sw['http_port']}  (log {sw['log']})")
        print(f"  try  {_load(sw, regions[name][0], connections=4)}")
    pair = forwarding_pair(regions)
    if pair is not None:
        a, pa, b, pb = pair
        print(f"forwarded and approved: province {pb}'s cards at province {pa}'s terminals "
              f"({a}) are decided by {b}; their group's joint catalogue accepts them:")
    else:
        # No group is split: another group's cards are forwarded and refused 62 by their
        # issuer, as the catalogue says (a single switch answers the same).
        names = list(regions)
        a, pa, b, pb = names[0], regions[names[0]][0], names[1], regions[names[1]][0]
        print(f"forwarded and refused (62: no catalogue accepts province {pb}'s cards at "
              f"province {pa}'s terminals; --layout split shows approvals):")
    cards = f"--card-province {pb} --cards-data-dir {_data_dir(switches[b])}"
    print(f"  purchases  {_load(switches[a], pa, cards)}")
    # --verify-share 0: taps only (metro gates and bus readers), as the line says.
    print(f"  taps       {_load(switches[a], pa, cards, native=True)}")


def _load(sw: dict, province: int, extra: str = "", *, connections: int = 2,
          native: bool = False) -> str:
    """An ``onecard load`` command driving a region's terminals of ``province``."""
    protocol = f"--protocol native --port {sw['native_port']} --verify-share 0" if native \
        else f"--port {sw['iso8583_port']}"
    return " ".join(part for part in (
        f"onecard load {protocol} --data-dir {_data_dir(sw)} --terminal-province {province}",
        extra, f"--connections {connections} --duration 10") if part)


def _data_dir(sw: dict) -> str:
    """A region's data set, quoted for a shell (the commands are copied and pasted)."""
    return shlex.quote(str(Path(sw["home"]) / "data"))


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
