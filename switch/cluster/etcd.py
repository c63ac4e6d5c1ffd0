"""One etcd member on loopback: Patroni's distributed configuration store (leader key, sync
state). One member is enough to try failover of PostgreSQL nodes on one machine; real machines
run three or five (deploy/etcd.conf.yml)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from onecard.switch.cluster.procs import HOST, ClusterError, get_json, log_tail, spawn

POLL_S = 0.2


def etcd_binary() -> str:
    path = shutil.which("etcd")
    if path is None:
        raise ClusterError("etcd not found on PATH (Debian: apt-get install etcd-server)")
    return path


def start(directory: Path, client_port: int, peer_port: int, timeout_s: float) -> int:
    """Start etcd with its data under directory/etcd; its pid once it answers /health."""
    assert client_port != peer_port
    binary = etcd_binary()
    data_dir = directory / "etcd"
    data_dir.mkdir(mode=0o700, exist_ok=True)
    client_url, peer_url = f"http://{HOST}:{client_port}", f"http://{HOST}:{peer_port}"
    argv = [binary, "--name", "etcd0", "--data-dir", str(data_dir),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"etcd0={peer_url}", "--initial-cluster-state", "new",
            # No metrics or pprof listeners beyond the client port: nothing else to keep free.
            "--log-level", "warn"]
    log_path = directory / "etcd.log"
    proc = spawn(argv, log_path, directory / "etcd.pid")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"etcd exited at start (code {proc.returncode}; port "
                               f"{client_port} or {peer_port} busy?): {log_tail(log_path, 3)}")
        health = get_json(f"{client_url}/health")
        if health and health.get("health") == "true":
            return proc.pid
        time.sleep(POLL_S)
    raise ClusterError(f"etcd not healthy after {timeout_s:.0f} s: {log_tail(log_path, 3)}")
