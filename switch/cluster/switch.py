"""``onecard cluster up --switch``: a switch serving from the cluster, to try failover by hand.

Under DIR/switch: ``demo``, a demo data set made and imported into the cluster's database
``onecard`` (the SQLite copy stays: the load generator reads its terminals there; its key
file ``demo.kek`` is the switch's key-encryption key), ``local``, the switch's own directory
(lock and operators files: the operators are made before the switch starts and their tokens
shown once by ``cluster up``, never written to the log), its configuration ``onecard.toml``
(the PostgreSQL store, a synchronous standby required) and its log. The switch runs in a
session of its own; ``down`` stops it first (SIGTERM: it finishes its commits and
checkpoints) because its command line names DIR."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from onecard.switch.cluster import tokens
from onecard.switch.cluster.procs import HOST, ClusterError, alive, free_ports, log_tail, spawn

DATABASE = "onecard"
READY_TIMEOUT_S = 180.0
POLL_S = 0.2


def _store(cluster_dsn: str) -> str:
    """The cluster DSN for the switch's database, created if missing."""
    import psycopg

    with psycopg.connect(cluster_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                        (DATABASE,)).fetchone() is None:
            conn.execute(f"CREATE DATABASE {DATABASE}")
    return cluster_dsn.replace("dbname=postgres", f"dbname={DATABASE}")


def _fill(data_dir: Path, dsn: str, cards: int) -> None:
    from onecard.switch import demo
    from onecard.switch.store.pg.connect import connect
    from onecard.switch.store.pg.importer import import_data_set

    demo.generate(data_dir, cards=cards)
    pg = connect(dsn)
    try:
        result = import_data_set(data_dir, pg)
    finally:
        pg.close()
    print(f"demo data set of {cards:,} cards imported ({result.journal_end} journal records)",
          flush=True)


def config_text(home: Path, dsn: str, ports: list[int]) -> str:
    return (f'data_dir = "{home / "local"}"\n\n[security]\nkek_file = "{home / "demo.kek"}"\n\n'
            f'[server]\nterminal_host = "{HOST}"\n'
            f"iso8583_port = {ports[0]}\nnative_port = {ports[1]}\nhttp_port = {ports[2]}\n\n"
            f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\nrequire_sync_standby = true\n'
            "# a failover on this cluster (Patroni ttl 20 s) takes about 20-30 s\n"
            "failover_timeout_s = 120\n")


def start(directory: Path, cluster_dsn: str, cards: int) -> tuple[dict, dict[str, str]]:
    """Fill the store and start the switch; its ports and files once it is ready, and its
    operators' tokens (made here, to be shown once: the switch's output is its log)."""
    home = directory / "switch"
    home.mkdir(mode=0o700, exist_ok=True)
    dsn = _store(cluster_dsn)
    _fill(home / "demo", dsn, cards)
    ports = free_ports(3)
    config = home / "onecard.toml"
    config.write_text(config_text(home, dsn, ports))
    made = tokens.make_operators(config)
    log_path, pid_path = home / "switch.log", home / "switch.pid"
    pid = spawn([sys.executable, "-m", "onecard.switch.cli", "serve", "--config", str(config)],
                log_path, pid_path).pid
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if "onecard: ready" in log_path.read_text(errors="replace"):
            return {"config": str(config), "log": str(log_path), "pid": pid,
                    "iso8583_port": ports[0], "native_port": ports[1],
                    "http_port": ports[2]}, made
        if not alive(pid):
            raise ClusterError(f"the switch exited at start: {log_tail(log_path)}")
        time.sleep(POLL_S)
    raise ClusterError(f"the switch was not ready after {READY_TIMEOUT_S:.0f} s: "
                       f"{log_tail(log_path)}")
