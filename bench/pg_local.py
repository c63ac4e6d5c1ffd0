"""A throwaway local PostgreSQL server for the tests and benchmarks of the PostgreSQL store.

initdb into a fresh 0700 directory, listening on 127.0.0.1 at a free port with its unix
socket inside that directory (nothing of the machine's own PostgreSQL is touched), password
(SCRAM) authentication over TCP. PostgreSQL refuses to run as root: as root, the directory
is given to the ``postgres`` user and the server runs as it.

``start_pair()`` adds one streaming standby (``pg_basebackup -R``) that the primary waits for
at every commit (``synchronous_standby_names = 'ANY 1 (s1)'``), the smallest set-up with a
synchronous replica and no failover manager.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PASSWORD: Final = "onecard-test"
USER: Final = "postgres"
START_TIMEOUT_S: Final = 60
STANDBY_NAME: Final = "s1"
REPLICATION_USER: Final = "replicator"
SYNC_TIMEOUT_S: Final = 60.0
POLL_S: Final = 0.2


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian layout), None without one."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(*cmd: str) -> subprocess.CompletedProcess:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *cmd], capture_output=True, text=True, check=True)


@dataclass
class LocalServer:
    root: Path
    port: int
    bin: Path
    options: str = ""           # pg_ctl -o, kept so a stopped server can start again

    @property
    def dsn(self) -> str:
        return (f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} "
                "dbname=postgres")

    @property
    def data(self) -> Path:
        return self.root / "data"

    def dsn_for(self, dbname: str, **changes: str) -> str:
        parts = {"host": "127.0.0.1", "port": str(self.port), "user": USER,
                 "password": PASSWORD, "dbname": dbname, **changes}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        return _as_postgres(*cmd)

    def sql(self, query: str) -> str:
        """One statement through psql over the unix socket (trust): no driver needed."""
        return self._run(str(self.bin / "psql"), "-h", str(self.root), "-p", str(self.port),
                         "-U", USER, "-d", "postgres", "-XAtqc", query).stdout.strip()

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def launch(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-o", self.options, "-w", "-t", str(START_TIMEOUT_S), "start")

    def halt(self, mode: str = "immediate") -> None:
        """Stop the server, keep its directory (``launch`` starts it again)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.root, ignore_errors=True)


def _new_root(pg_bin: Path) -> LocalServer:
    root = Path(tempfile.mkdtemp(prefix="onecard-pg-"))   # /tmp: postgres can reach it
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    os.chmod(root, 0o700)
    return LocalServer(root, free_port(), pg_bin)


def _options(server: LocalServer, settings: tuple[str, ...], durable: bool) -> str:
    options = [f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.root}",
               *(f"-c {s}" for s in settings)]
    if not durable:
        options.append("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
    return " ".join(options)


def start(*settings: str, durable: bool = True) -> LocalServer:
    """A running server; settings are extra ``-c name=value`` options. durable=False turns
    fsync off (tests: what they check is not the disk's)."""
    pg_bin = bin_dir()
    assert pg_bin is not None, "no PostgreSQL installed under /usr/lib/postgresql"
    server = _new_root(pg_bin)
    (server.root / "pw").write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(server.root / "pw", "postgres", "postgres")
    server._run(str(pg_bin / "initdb"), "-D", str(server.data), "-U", USER, "--pwfile",
                str(server.root / "pw"), "--auth-local=trust", "--auth-host=scram-sha-256",
                "-E", "UTF8", "--locale=C.UTF-8")
    server.options = _options(server, settings, durable)
    server.launch()
    return server


@dataclass
class LocalPair:
    """A primary and its one synchronous standby: ``dsn_for`` is the primary's."""
    primary: LocalServer
    standby: LocalServer

    @property
    def dsn(self) -> str:
        return self.primary.dsn

    def dsn_for(self, dbname: str, **changes: str) -> str:
        return self.primary.dsn_for(dbname, **changes)

    def sync_state(self) -> str:
        """The standby's state as the primary sees it: 'sync' or 'quorum' once commits wait
        for it, '' while it is not streaming."""
        return self.primary.sql("SELECT coalesce(max(sync_state), '') FROM pg_stat_replication "
                                f"WHERE application_name = '{STANDBY_NAME}'")

    def wait_sync(self, timeout_s: float = SYNC_TIMEOUT_S) -> None:
        assert timeout_s > 0
        deadline = time.monotonic() + timeout_s
        while self.sync_state() not in ("sync", "quorum"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"standby {STANDBY_NAME} not synchronous after "
                                   f"{timeout_s:.0f} s; its log: {self.standby.root / 'log'}")
            time.sleep(POLL_S)

    def stop(self) -> None:
        # The standby first: a primary stopped first would leave it retrying to connect.
        for server in (self.standby, self.primary):
            try:
                server.stop()
            except subprocess.CalledProcessError:     # already stopped (a test halted it)
                shutil.rmtree(server.root, ignore_errors=True)


def start_pair(*settings: str) -> LocalPair:
    """A durable primary (fsync on) and one synchronous streaming standby on another port.
    Each commit on the primary returns once the standby has flushed it to its disk
    (``synchronous_commit = on``); with the standby down, commits wait."""
    primary = start("wal_level=replica", "max_wal_senders=4", *settings)
    try:
        standby = _new_root(primary.bin)
    except BaseException:
        primary.stop()
        raise
    pair = LocalPair(primary, standby)
    try:
        # A role that may stream WAL and nothing else, as in a deployment; initdb's pg_hba
        # already has "host replication all 127.0.0.1/32 scram-sha-256".
        primary.sql(f"CREATE ROLE {REPLICATION_USER} WITH REPLICATION LOGIN "
                    f"PASSWORD '{PASSWORD}'")
        conninfo = (f"host=127.0.0.1 port={primary.port} user={REPLICATION_USER} "
                    f"password={PASSWORD} application_name={STANDBY_NAME}")
        standby._run(str(primary.bin / "pg_basebackup"), "-d", conninfo, "-D",
                     str(standby.data), "-R", "-X", "stream", "-c", "fast")
        # -R wrote primary_conninfo; this line comes later in the file, so it wins, and
        # names the standby as synchronous_standby_names lists it.
        with (standby.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"primary_conninfo = '{conninfo}'\n")
        standby.options = _options(standby, settings, True)
        standby.launch()
        primary.sql(f"ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 ({STANDBY_NAME})'")
        primary.sql("ALTER SYSTEM SET synchronous_commit = 'on'")
        primary.sql("SELECT pg_reload_conf()")
        pair.wait_sync()
    except BaseException:
        pair.stop()
        raise
    return pair
