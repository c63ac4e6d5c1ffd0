"""A throwaway local PostgreSQL server for the tests and benchmarks of the PostgreSQL store.

initdb into a fresh 0700 directory, listening on 127.0.0.1 at a free port with its unix
socket inside that directory (nothing of the machine's own PostgreSQL is touched), password
(SCRAM) authentication over TCP. PostgreSQL refuses to run as root: as root, the directory
is given to the ``postgres`` user and the server runs as it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PASSWORD: Final = "onecard-test"
USER: Final = "postgres"
START_TIMEOUT_S: Final = 60


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian layout), None without one."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    root: Path
    port: int
    bin: Path

    @property
    def dsn(self) -> str:
        return (f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} "
                "dbname=postgres")

    def dsn_for(self, dbname: str, **changes: str) -> str:
        parts = {"host": "127.0.0.1", "port": str(self.port), "user": USER,
                 "password": PASSWORD, "dbname": dbname, **changes}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, check=True)

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
                  "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def start(*settings: str, durable: bool = True) -> LocalServer:
    """A running server; settings are extra ``-c name=value`` options. durable=False turns
    fsync off (tests: what they check is not the disk's)."""
    pg_bin = bin_dir()
    assert pg_bin is not None, "no PostgreSQL installed under /usr/lib/postgresql"
    root = Path(tempfile.mkdtemp(prefix="onecard-pg-"))   # /tmp: postgres can reach it
    server = LocalServer(root, free_port(), pg_bin)
    (root / "pw").write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "pw", "postgres", "postgres")
    os.chmod(root, 0o700)
    server._run(str(pg_bin / "initdb"), "-D", str(root / "data"), "-U", USER, "--pwfile",
                str(root / "pw"), "--auth-local=trust", "--auth-host=scram-sha-256",
                "-E", "UTF8", "--locale=C.UTF-8")
    options = [f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root}",
               *(f"-c {s}" for s in settings)]
    if not durable:
        options.append("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
    server._run(str(pg_bin / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"),
                "-o", " ".join(options), "-w", "-t", str(START_TIMEOUT_S), "start")
    return server
