"""``onecard cluster up|status|down --dir DIR``: a Patroni-managed PostgreSQL cluster on
loopback, to try the PostgreSQL store and to test failover.

DIR holds everything: etcd's data and log, one directory per node (PostgreSQL data owned by
the postgres user, Patroni configuration and log), the pid files ``down`` stops, a libpq
password file and cluster.json (DSN, REST URLs, ports) for programs that use the cluster."""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import time
from pathlib import Path

from onecard.switch.cluster import etcd, patroni, tokens
from onecard.switch.cluster import switch as cluster_switch
from onecard.switch.cluster.patroni import Node
from onecard.switch.cluster.procs import (
    HOST,
    ClusterError,
    alive,
    free_ports,
    log_tail,
    ours,
    read_pid,
    stop_waves,
)

NODES_MAX = 9
ETCD_START_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 120.0
SWITCH_STOP_TIMEOUT_S = 60.0
PATRONI_STOP_TIMEOUT_S = 30.0       # Patroni stops PostgreSQL (fast shutdown) on SIGTERM
LEFTOVER_STOP_TIMEOUT_S = 5.0
POLL_S = 0.5
CLUSTER_FILE = "cluster.json"


def add_arguments(sub) -> None:
    """Add ``cluster`` and its up/status/down subcommands to the onecard parser."""
    c = sub.add_parser("cluster", help="a Patroni-managed PostgreSQL cluster on loopback")
    csub = c.add_subparsers(dest="cluster_command", required=True)
    up = csub.add_parser("up", help="start etcd and N Patroni/PostgreSQL nodes, wait until "
                         "a leader and synchronous standbys stream")
    up.add_argument("--nodes", type=int, default=3, help="PostgreSQL nodes (default 3)")
    up.add_argument("--timeout", type=float, default=READY_TIMEOUT_S,
                    help=f"seconds to wait for the cluster (default {READY_TIMEOUT_S:.0f})")
    up.add_argument("--switch", action="store_true", help="also import a demo data set into "
                    "the cluster and start a switch serving from it (DIR/switch)")
    up.add_argument("--cards", type=int, default=100_000,
                    help="cards in the --switch (or --regions) demo data set (default 100000)")
    up.add_argument("--regions", type=int, default=0, metavar="N",
                    help="instead of PostgreSQL: N regional switches and a 3-node NATS cluster, "
                    "the demo data split by province (docs/regions.md)")
    up.add_argument("--layout", choices=("split", "groups"), default="split",
                    help="--regions: which provinces each region owns. split (default): the "
                    "Yangtze River Delta across the switches (sh, js, zj, ah: forwarded "
                    "requests its joint catalogue approves); groups: one province group per "
                    "region (jjj, yrd, gba: forwarded purchases refused 62)")
    up.add_argument("--latency-budget-ms", type=int, default=None, metavar="MS",
                    help="--regions: the switches' [server] latency_budget_ms (0: no load "
                    "shedding, for tests and benchmarks on shared machines)")
    up.add_argument("--forward-timeout-ms", type=int, default=None, metavar="MS",
                    help="--regions: the switches' [region] timeout_ms (default 150): how "
                    "long a forwarded batch may wait for its issuer before 91")
    for name, helptext in (("status", "roles and states of the nodes"),
                           ("down", "stop everything `up` started (idempotent)")):
        csub.add_parser(name, help=helptext)
    start = csub.add_parser("start", help="start a stopped (or killed) node again: it rejoins "
                            "as a standby; returns once the cluster is ready")
    start.add_argument("node", help="the node's name, e.g. node0")
    start.add_argument("--timeout", type=float, default=READY_TIMEOUT_S)
    for sp in csub.choices.values():
        sp.add_argument("--dir", required=True, type=Path, help="the cluster's directory")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run one cluster subcommand; a ClusterError is one line on stderr and exit status 2."""
    from onecard.switch.cluster import regions

    try:
        if args.cluster_command == "up" and args.regions:
            return regions.up(args.dir, args.regions, args.cards, args.timeout,
                              args.latency_budget_ms, args.forward_timeout_ms,
                              args.layout)
        if args.cluster_command == "up":
            return up(args.dir, args.nodes, args.timeout,
                      switch_cards=args.cards if args.switch else 0)
        if args.cluster_command == "down" and regions.is_regions(args.dir):
            return regions.down(args.dir)
        if args.cluster_command == "status" and regions.is_regions(args.dir):
            return regions.status(args.dir)
        if args.cluster_command == "down":
            return down(args.dir)
        if args.cluster_command == "start":
            return start_node(args.dir, args.node, args.timeout)
        return status(args.dir)
    except ClusterError as exc:
        print(f"onecard cluster: {exc}", file=sys.stderr)
        return 2


def _nodes(directory: Path, count: int, ports: list[int]) -> list[Node]:
    return [Node(f"node{i}", directory / f"node{i}", ports[2 * i], ports[2 * i + 1])
            for i in range(count)]


def dsn(directory: Path, nodes: list[Node]) -> str:
    """libpq connection string over every node: libpq tries them in order and keeps the one
    that accepts writes, so a client follows the leader across failovers by reconnecting."""
    hosts = ",".join(HOST for _ in nodes)
    ports = ",".join(str(n.pg_port) for n in nodes)
    return (f"host={hosts} port={ports} user={patroni.SUPERUSER} dbname=postgres "
            f"passfile={directory / 'pgpass'} connect_timeout=3 "
            "target_session_attrs=read-write")


def up(directory: Path, count: int, timeout_s: float, *, switch_cards: int = 0) -> int:
    """Start etcd and count nodes under directory (and a switch on a demo data set of
    switch_cards cards, if any); 0 once ready, after printing the DSN."""
    if not 2 <= count <= NODES_MAX:
        raise ClusterError(f"--nodes {count}: between 2 and {NODES_MAX}")
    directory = directory.resolve()
    if directory.exists() and any(directory.iterdir()):
        raise ClusterError(f"{directory} is not empty (a previous cluster? `onecard cluster "
                           "down --dir` it, then remove it)")
    etcd.etcd_binary()                  # fail before anything starts
    bin_dir = patroni.pg_bin_dir()
    python = patroni.patroni_argv()
    directory.mkdir(parents=True, exist_ok=True)
    # The postgres user must traverse DIR to reach its node directories (0700, its own).
    directory.chmod(0o711)
    passwords = {u: secrets.token_urlsafe(18) for u in (patroni.SUPERUSER,
                                                        patroni.REPLICATION_USER)}
    ports = free_ports(2 + 2 * count)
    nodes = _nodes(directory, count, ports[2:])
    try:
        etcd.start(directory, ports[0], ports[1], ETCD_START_TIMEOUT_S)
        for node in nodes:
            patroni.prepare(node, patroni.node_config(node, ports[0], passwords, bin_dir,
                                                      count))
            patroni.start(node, python)
        view = _wait_ready(nodes, timeout_s)
    except BaseException:
        _stop(directory)
        raise
    info = _write_info(directory, nodes, ports[0], passwords[patroni.SUPERUSER], view)
    print(f"cluster ready: leader {info['leader']}, synchronous standby(s) "
          f"{', '.join(info['sync_standbys'])}")
    print(f"dsn: {info['dsn']}")
    print(f"rest: {' '.join(info['rest_urls'])}")
    if switch_cards:
        try:
            sw, made = cluster_switch.start(directory, info["dsn"], switch_cards)
        except BaseException:
            _stop(directory)
            raise
        print(f"switch ready: ISO 8583 {HOST}:{sw['iso8583_port']}, native "
              f"{HOST}:{sw['native_port']}, http {HOST}:{sw['http_port']} (config "
              f"{sw['config']}, log {sw['log']}); try: onecard load --port "
              f"{sw['iso8583_port']} --data-dir {directory / 'switch' / 'demo'}")
        tokens.show({"switch": made}, {"switch": Path(sw["config"])}, directory)
    print(f"written: {directory / CLUSTER_FILE}; stop with: onecard cluster down --dir "
          f"{directory}")
    return 0


def _wait_ready(nodes: list[Node], timeout_s: float) -> dict:
    """Poll Patroni's REST API until ready; progress whenever the picture changes."""
    assert timeout_s > 0
    started = time.monotonic()
    last: list[str] = []
    while True:
        view = patroni.cluster_view(nodes)
        reasons = patroni.not_ready(nodes, view)
        elapsed_s = time.monotonic() - started
        if not reasons:
            assert view is not None
            print(f"ready after {elapsed_s:.1f} s", flush=True)
            return view
        for node in nodes:
            pid = read_pid(node.pid_path)
            if pid is None or not alive(pid):
                raise ClusterError(f"{node.name}'s Patroni exited: {log_tail(node.log_path)}")
        if reasons != last:
            print(f"[{elapsed_s:5.1f} s] waiting: {'; '.join(reasons)}", flush=True)
            last = reasons
        if elapsed_s > timeout_s:
            name = reasons[0].split(":", 1)[0]
            node = next((n for n in nodes if n.name == name), nodes[0])
            raise ClusterError(f"not ready after {timeout_s:.0f} s ({'; '.join(reasons)}); "
                               f"{node.name}'s log ends:\n{log_tail(node.log_path)}")
        time.sleep(POLL_S)


def _write_info(directory: Path, nodes: list[Node], etcd_port: int, password: str,
                view: dict) -> dict:
    passfile = directory / "pgpass"
    passfile.write_text(f"{HOST}:*:*:{patroni.SUPERUSER}:{password}\n")
    passfile.chmod(0o600)               # libpq ignores a password file others can read
    roles = {m["name"]: m["role"] for m in view["members"]}
    info = {
        "dsn": dsn(directory, nodes), "passfile": str(passfile),
        "rest_urls": [n.rest_url for n in nodes],
        "etcd": f"http://{HOST}:{etcd_port}",
        "leader": next(name for name, role in roles.items() if role == "leader"),
        "sync_standbys": sorted(n for n, r in roles.items() if r in patroni.STANDBY_ROLES),
        "nodes": [{"name": n.name, "host": HOST, "pg_port": n.pg_port,
                   "rest_port": n.rest_port, "rest_url": n.rest_url,
                   "data_dir": str(n.data_dir), "dir": str(n.directory)} for n in nodes],
    }
    path = directory / CLUSTER_FILE
    path.write_text(json.dumps(info, indent=2) + "\n")
    return info


def _read_info(directory: Path) -> tuple[dict, list[Node]]:
    path = directory / CLUSTER_FILE
    if not path.exists():
        raise ClusterError(f"no {path}: no cluster was started there (onecard cluster up)")
    info = json.loads(path.read_text())
    return info, [Node(n["name"], Path(n["dir"]), n["pg_port"], n["rest_port"])
                  for n in info["nodes"]]


def start_node(directory: Path, name: str, timeout_s: float) -> int:
    """Start one node's Patroni again (after a crash, a kill or a repair); 0 once the cluster
    is ready. Patroni rejoins it as a standby of the current leader (pg_rewind if its
    timeline diverged)."""
    directory = directory.resolve()
    _, nodes = _read_info(directory)
    node = next((n for n in nodes if n.name == name), None)
    if node is None:
        raise ClusterError(f"no node {name} (nodes: {', '.join(n.name for n in nodes)})")
    pid = read_pid(node.pid_path)
    if pid is not None and ours(pid, directory):
        raise ClusterError(f"{name}'s Patroni is running (pid {pid})")
    patroni.start(node, patroni.patroni_argv())
    _wait_ready(nodes, timeout_s)
    print(f"{name} started; cluster ready")
    return 0


def status(directory: Path) -> int:
    """Print each node's role and state; 0 when the cluster is ready, 1 when not."""
    info, nodes = _read_info(directory)
    view = patroni.cluster_view(nodes)
    if view is None:
        print("no node's REST API answers (stopped? onecard cluster up)")
        return 1
    for m in view["members"]:
        print(f"{m['name']:8} {m.get('role', '?'):15} {m.get('state', '?'):10} "
              f"port {m.get('port')}  lag {m.get('lag', 0)}  {m.get('api_url', '')}")
    reasons = patroni.not_ready(nodes, view)
    print("ready" if not reasons else f"not ready: {'; '.join(reasons)}")
    print(f"dsn: {info['dsn']}")
    return 0 if not reasons else 1


def down(directory: Path) -> int:
    """Stop everything started under directory; nothing to stop is success too."""
    directory = directory.resolve()
    if not directory.is_dir():
        print(f"nothing to stop: no {directory}")
        return 0
    stopped = _stop(directory)
    print(f"stopped {stopped} process group(s) under {directory}")
    return 0


def _stop(directory: Path) -> int:
    """Patroni first (it stops its PostgreSQL cleanly), then any PostgreSQL left behind (a
    Patroni that was killed leaves its postmaster running in its own session), then etcd."""
    node_dirs = sorted(p for p in directory.glob("node*") if p.is_dir())
    # PostgreSQL: SIGINT is its fast shutdown (SIGTERM, smart, waits for clients to leave).
    # The switch first: it finishes its commits while the cluster is still there.
    waves = [([directory / "switch" / "switch.pid"], signal.SIGTERM, SWITCH_STOP_TIMEOUT_S),
             ([d / "patroni.pid" for d in node_dirs], signal.SIGTERM, PATRONI_STOP_TIMEOUT_S),
             ([d / "data" / "postmaster.pid" for d in node_dirs], signal.SIGINT,
              LEFTOVER_STOP_TIMEOUT_S),
             ([directory / "etcd.pid"], signal.SIGTERM, LEFTOVER_STOP_TIMEOUT_S)]
    return stop_waves(directory, waves, spare_runuser=True)
