"""The stores ``bench.pg_compare`` measures the switch on, each set up from nothing and torn
down after its run: the embedded SQLite store, a single PostgreSQL server, a PostgreSQL
primary with one synchronous standby, and the Patroni cluster of ``onecard cluster up``.

Each yields a ``Store``: the ``[store]`` table of the switch's configuration, and the process
trees whose CPU the run is charged (the servers' own: what the box pays for the store).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from onecard.bench import pg_local

TOPOLOGIES: Final = ("sqlite", "pg", "pg-sync", "patroni")
DESCRIPTIONS: Final = {
    "sqlite": "embedded SQLite, WAL, synchronous=FULL (an fsync per group commit)",
    "pg": "one local PostgreSQL 'server', fsync on, synchronous_commit=on, no standby",
    "pg-sync": "PostgreSQL primary + 1 streaming standby, ANY 1 (s1): a commit waits for the "
               "standby's flush",
    "patroni": "onecard cluster up: etcd + 3 Patroni nodes, quorum synchronous mode (strict)",
}
DATABASE: Final = "onecard"
IMPORT_TIMEOUT_S: Final = 600
CLUSTER_UP_TIMEOUT_S: Final = 180.0

Progress = Callable[[str], None]


class TopologyError(Exception):
    """A store could not be set up; the message is one line."""


@dataclass
class Store:
    name: str
    store_toml: str                     # the [store] table for the switch's configuration
    trees: Callable[[], dict[str, list[int]]] = field(default=lambda: {})


def _toml_string(text: str) -> str:
    return json.dumps(text)             # a JSON string is a valid TOML basic string


def _pg_store_toml(dsn: str, require_sync: bool) -> str:
    return (f'[store]\nbackend = "postgresql"\ndsn = {_toml_string(dsn)}\n'
            f"require_sync_standby = {'true' if require_sync else 'false'}\n")


def _onecard(*args: str, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onecard.switch.cli", *args],
                          capture_output=True, text=True, timeout=timeout_s)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def import_data_set(data_dir: Path, dsn: str, progress: Progress) -> None:
    """``onecard db import`` of the demo data set (migrates the empty database first)."""
    progress(f"onecard db import {data_dir.name} (database {DATABASE})")
    done = _onecard("db", "import", str(data_dir), "--dsn", dsn, timeout_s=IMPORT_TIMEOUT_S)
    if done.returncode != 0:
        raise TopologyError(f"onecard db import failed: {_last_line(done.stderr)}")
    summary = done.stdout.splitlines()[0] if done.stdout else "imported"
    progress(summary.split("; counts")[0])      # the rest: checks that passed, a digest


def _local_trees(*servers: pg_local.LocalServer) -> Callable[[], dict[str, list[int]]]:
    def trees() -> dict[str, list[int]]:
        pids = [pid for s in servers if (pid := s.postmaster_pid()) is not None]
        return {"postgres": pids}
    return trees


@contextlib.contextmanager
def _sqlite(data_dir: Path, work: Path, progress: Progress) -> Iterator[Store]:
    yield Store("sqlite", '[store]\nsynchronous = "FULL"\n')


@contextlib.contextmanager
def _pg(data_dir: Path, work: Path, progress: Progress) -> Iterator[Store]:
    progress("initdb + start PostgreSQL (fsync on)")
    server = pg_local.start()
    try:
        server.sql(f"CREATE DATABASE {DATABASE}")
        dsn = server.dsn_for(DATABASE)
        import_data_set(data_dir, dsn, progress)
        yield Store("pg", _pg_store_toml(dsn, False), _local_trees(server))
    finally:
        progress("stopping PostgreSQL")
        server.stop()


@contextlib.contextmanager
def _pg_sync(data_dir: Path, work: Path, progress: Progress) -> Iterator[Store]:
    progress("initdb + start a PostgreSQL primary, pg_basebackup a standby, wait until "
             "it is synchronous")
    try:
        pair = pg_local.start_pair()
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        raise TopologyError(f"primary + standby did not start: {exc}") from exc
    try:
        progress(f"standby {pg_local.STANDBY_NAME}: {pair.sync_state()}")
        pair.primary.sql(f"CREATE DATABASE {DATABASE}")
        dsn = pair.dsn_for(DATABASE)
        import_data_set(data_dir, dsn, progress)
        yield Store("pg-sync", _pg_store_toml(dsn, True),
                    _local_trees(pair.primary, pair.standby))
    finally:
        progress("stopping the primary and its standby")
        pair.stop()


def _cluster_trees(directory: Path) -> Callable[[], dict[str, list[int]]]:
    from onecard.switch.cluster.procs import read_pid

    def trees() -> dict[str, list[int]]:
        nodes = sorted(p for p in directory.glob("node*") if p.is_dir())
        postgres = [read_pid(d / "data" / "postmaster.pid") for d in nodes]
        managers = [read_pid(d / "patroni.pid") for d in nodes] + [
            read_pid(directory / "etcd.pid")]
        # A postmaster runs under its Patroni: it is counted in "postgres" only.
        return {"postgres": [p for p in postgres if p is not None],
                "patroni+etcd": [p for p in managers if p is not None]}
    return trees


def _create_database(dsn: str) -> None:
    from onecard.switch.store.pg.connect import PgError, connect, driver_errors, one_line

    try:
        with connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
    except PgError as exc:
        raise TopologyError(str(exc)) from exc
    except driver_errors() as exc:
        raise TopologyError(f"CREATE DATABASE: {one_line(exc)}") from exc


@contextlib.contextmanager
def _patroni(data_dir: Path, work: Path, progress: Progress) -> Iterator[Store]:
    from onecard.switch.cluster.procs import ClusterError
    from onecard.switch.commands import cluster

    directory = work / "cluster"
    progress(f"onecard cluster up --nodes 3 --dir {directory}")
    try:
        try:
            with contextlib.redirect_stdout(sys.stderr):     # its progress, not the table's
                cluster.up(directory, 3, CLUSTER_UP_TIMEOUT_S)
        except ClusterError as exc:
            raise TopologyError(f"onecard cluster up: {exc}") from exc
        dsn = json.loads((directory / cluster.CLUSTER_FILE).read_text())["dsn"]
        _create_database(dsn)
        dsn = dsn.replace("dbname=postgres", f"dbname={DATABASE}")
        import_data_set(data_dir, dsn, progress)
        # The trees are read at each sample: a postmaster restarted by Patroni is found.
        yield Store("patroni", _pg_store_toml(dsn, True), _cluster_trees(directory.resolve()))
    finally:
        progress("onecard cluster down")
        with contextlib.redirect_stdout(sys.stderr):
            cluster.down(directory)


SETUPS: Final = {"sqlite": _sqlite, "pg": _pg, "pg-sync": _pg_sync, "patroni": _patroni}


def open_store(name: str, data_dir: Path, work: Path, progress: Progress
               ) -> contextlib.AbstractContextManager[Store]:
    """The named store, ready for a switch on data_dir (imported there for PostgreSQL)."""
    return SETUPS[name](data_dir, work, progress)
