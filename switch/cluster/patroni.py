"""Patroni nodes on loopback: configuration from a template, start as the postgres user,
readiness from Patroni's REST API.

The settings mirror deploy/patroni.yml (read its comments for the why); only addresses, ports,
paths and the failure timings differ: ttl is Patroni's minimum so a test's failover takes
seconds, not half a minute."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from onecard.switch.cluster.procs import HOST, ClusterError, get_json, spawn

SCOPE = "onecard"
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
RUN_AS = "postgres"                 # PostgreSQL refuses to run as root
SUPERUSER = "postgres"
REPLICATION_USER = "replicator"
# Patroni's smallest accepted ttl; loop_wait + 2 * retry_timeout must stay below it.
TTL_S = 20
LOOP_WAIT_S = 1
RETRY_TIMEOUT_S = 5
STANDBY_ROLES = ("sync_standby", "quorum_standby")


@dataclass(frozen=True)
class Node:
    name: str
    directory: Path
    pg_port: int
    rest_port: int

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "patroni.log"

    @property
    def pid_path(self) -> Path:
        return self.directory / "patroni.pid"


def pg_bin_dir() -> str:
    """The newest installed PostgreSQL's bin directory (Debian keeps them versioned)."""
    found = [p for p in glob.glob(PG_BIN_GLOB)
             if Path(p).parent.name.isdigit() and os.path.exists(os.path.join(p, "initdb"))]
    found.sort(key=lambda p: int(Path(p).parent.name))
    if not found:
        raise ClusterError(f"PostgreSQL not found ({PG_BIN_GLOB}/initdb; Debian: apt-get "
                           "install postgresql)")
    return found[-1]


PROBE = "import patroni.__main__, patroni.dcs.etcd3, psycopg"


def patroni_argv() -> tuple[list[str], dict[str, str]]:
    """How to run Patroni as the user PostgreSQL runs as: (argv prefix, extra environment).

    This interpreter first; when that user cannot run it (a virtual environment whose Python
    lives under root's 0700 home), the system's Python of the same version with this
    environment's site-packages on PYTHONPATH and -S, so the system's own packages (an older
    pyOpenSSL, say) do not mix with ours."""
    try:
        import patroni
    except ImportError as exc:
        raise ClusterError("Patroni not installed in this Python (pip install "
                           "'patroni[psycopg3,etcd3]', or onecard's test extra)") from exc
    prefix, _, _ = _run_as()
    site_dir = str(Path(patroni.__file__).resolve().parent.parent)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [([sys.executable], {}),
                  ([f"/usr/bin/python{version}", "-S"], {"PYTHONPATH": site_dir})]
    for argv, env in candidates:
        probe = [*prefix, "env", *(f"{k}={v}" for k, v in env.items()), *argv, "-c", PROBE]
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
                return [*argv, "-m", "patroni"], env
    raise ClusterError(f"the {RUN_AS} user cannot run Patroni with {sys.executable} nor "
                       f"/usr/bin/python{version}: make the interpreter and {site_dir} "
                       "readable by it")


def node_config(node: Node, etcd_port: int, passwords: dict[str, str], bin_dir: str,
                members: int) -> dict:
    """One node's Patroni configuration (deploy/patroni.yml with loopback values)."""
    assert members >= 2, "a synchronous standby needs a second node"
    pg_hba = ["local all all trust",     # the node's own socket, in its 0700 directory
              f"host replication {REPLICATION_USER} {HOST}/32 scram-sha-256",
              f"host all all {HOST}/32 scram-sha-256"]
    return {
        "scope": SCOPE, "name": node.name,
        "log": {"level": "INFO"},
        "restapi": {"listen": f"{HOST}:{node.rest_port}",
                    "connect_address": f"{HOST}:{node.rest_port}"},
        "etcd3": {"hosts": [f"{HOST}:{etcd_port}"]},
        "bootstrap": {
            "dcs": {
                "ttl": TTL_S, "loop_wait": LOOP_WAIT_S, "retry_timeout": RETRY_TIMEOUT_S,
                "maximum_lag_on_failover": 0,
                # Why quorum + strict: deploy/patroni.yml.
                "synchronous_mode": "quorum", "synchronous_mode_strict": True,
                "synchronous_node_count": 1,
                "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": {
                    "synchronous_commit": "on", "wal_level": "replica",
                    "wal_log_hints": "on", "max_wal_senders": 10,
                    "max_replication_slots": 10, "hot_standby": "on"}},
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums"],
        },
        "postgresql": {
            "listen": f"{HOST}:{node.pg_port}", "connect_address": f"{HOST}:{node.pg_port}",
            "data_dir": str(node.data_dir), "bin_dir": bin_dir,
            "pgpass": str(node.directory / "pgpass"),
            "authentication": {
                "superuser": {"username": SUPERUSER, "password": passwords[SUPERUSER]},
                "replication": {"username": REPLICATION_USER,
                                "password": passwords[REPLICATION_USER]},
                "rewind": {"username": SUPERUSER, "password": passwords[SUPERUSER]},
            },
            "pg_hba": pg_hba,
            "parameters": {"unix_socket_directories": str(node.directory),
                           "password_encryption": "scram-sha-256"},
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
    }


def _run_as() -> tuple[list[str], int, int]:
    """The argv prefix that drops to the postgres user when we are root, and its uid/gid."""
    if os.geteuid() != 0:
        return [], os.getuid(), os.getgid()
    try:
        user = pwd.getpwnam(RUN_AS)
    except KeyError as exc:
        raise ClusterError(f"no '{RUN_AS}' user to run PostgreSQL as (root is refused)") from exc
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ClusterError("runuser not found: needed to run PostgreSQL as postgres")
    return [runuser, "-u", RUN_AS, "--"], user.pw_uid, user.pw_gid


def prepare(node: Node, config: dict) -> None:
    """Write the node's directory and configuration, owned by the user PostgreSQL runs as."""
    prefix, uid, gid = _run_as()
    node.directory.mkdir(mode=0o700, exist_ok=False)
    config_path = node.directory / "patroni.yml"
    # JSON is YAML: no YAML writer needed.
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    config_path.chmod(0o600)
    node.log_path.touch(mode=0o600)
    for path in (node.directory, config_path, node.log_path):
        os.chown(path, uid, gid)
    check = subprocess.run([*prefix, "test", "-w", str(node.directory)], capture_output=True,
                           timeout=10)
    if check.returncode != 0:
        raise ClusterError(f"the {RUN_AS} user cannot reach {node.directory}: give its "
                           "parent directories o+x")


def start(node: Node, python: tuple[list[str], dict[str, str]]) -> int:
    """Start the node's Patroni (which initialises or clones and runs PostgreSQL) with
    python (from patroni_argv); its pid."""
    prefix, _, _ = _run_as()
    python_argv, python_env = python
    env = {**python_env, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "HOME": str(node.directory), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    argv = [*prefix, "env", *(f"{k}={v}" for k, v in env.items()), *python_argv,
            str(node.directory / "patroni.yml")]
    # The log file is ours (root): Patroni writes to the inherited descriptor.
    return spawn(argv, node.log_path, node.pid_path).pid


def cluster_view(nodes: list[Node]) -> dict | None:
    """GET /cluster from the first node that answers."""
    for node in nodes:
        view = get_json(f"{node.rest_url}/cluster")
        if view and "members" in view:
            return view
    return None


def not_ready(nodes: list[Node], view: dict | None) -> list[str]:
    """Why the cluster is not ready yet, one entry per node (empty: ready). Ready means one
    running leader, every other node streaming, at least one of them a synchronous standby."""
    if view is None:
        return [f"{n.name}: REST API not answering" for n in nodes]
    members = {m.get("name"): m for m in view["members"]}
    leaders = [m for m in members.values() if m.get("role") == "leader"]
    reasons = []
    for node in nodes:
        m = members.get(node.name)
        if m is None:
            reasons.append(f"{node.name}: not registered in etcd")
        elif m.get("role") == "leader":
            if m.get("state") != "running":
                reasons.append(f"{node.name}: leader {m.get('state')}")
        elif m.get("state") != "streaming":
            reasons.append(f"{node.name}: {m.get('role')} {m.get('state')}")
    if len(leaders) != 1:
        reasons.append(f"{len(leaders)} leaders")
    if not any(m.get("role") in STANDBY_ROLES for m in members.values()):
        reasons.append("no synchronous standby yet")
    return reasons
