"""Process plumbing shared by the etcd and Patroni launchers: free loopback ports, pid files,
bounded HTTP probes, log tails and stopping whole process groups."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from onecard.switch.errors import OnecardError

HOST = "127.0.0.1"
HTTP_TIMEOUT_S = 2.0
LOG_TAIL_LINES = 15
STOP_POLL_S = 0.1


class ClusterError(OnecardError):
    """A failure the command reports as one line (no traceback). No family of
    switch/errors.py: the loopback clusters are a try-out, not the switch in production."""


def free_ports(count: int) -> list[int]:
    """count distinct free TCP ports on loopback. The sockets stay open until all are picked so
    no port is handed out twice; another program may still take one before we bind it, which
    the launchers then report as a process that exited at start."""
    assert 0 < count <= 64
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(HTTP_TIMEOUT_S)
        return s.connect_ex((HOST, port)) == 0


def get_json(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> dict | None:
    """The JSON body of a GET (any status: Patroni answers 503 with a body), None when the
    server does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(ValueError):
            return json.loads(exc.read())
        return None
    except (OSError, ValueError):
        return None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def spawn(argv: list[str], log_path: Path, pid_path: Path, env: dict | None = None
          ) -> subprocess.Popen:
    """Start argv in its own session (so its process group can be killed as one) with stdout
    and stderr to log_path, and record its pid in pid_path before anything can fail."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    pid_path.write_text(f"{proc.pid}\n")
    return proc


def read_pid(path: Path) -> int | None:
    """The first line of a pid file (ours, or PostgreSQL's postmaster.pid), None if absent."""
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is dead for our purposes.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(alive(pid) for pid in group_members(pgid))


def group_members(pgid: int) -> list[int]:
    """Pids whose process group is pgid (from /proc: zombies included, filtered by alive)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def signal_group(pgid: int, sig: int, *, spare_runuser: bool = False) -> None:
    """Send sig to a process group. spare_runuser: not to a runuser leading it, which would
    answer SIGTERM by SIGKILLing its child a moment later ("Session terminated, killing
    shell"): Patroni must get the time to stop its PostgreSQL cleanly."""
    assert pgid > 1, pgid
    leader_is_runuser = False
    with contextlib.suppress(OSError):
        leader_is_runuser = Path(f"/proc/{pgid}/comm").read_text().strip() == "runuser"
    targets = ([p for p in group_members(pgid) if p != pgid]
               if spare_runuser and leader_is_runuser else None)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if targets is None:
            os.killpg(pgid, sig)
        for pid in targets or ():
            os.kill(pid, sig)


def stop_group(pgid: int, timeout_s: float) -> None:
    """Wait up to timeout_s for a process group (already signalled) to end, then SIGKILL it
    and wait as long again."""
    assert pgid > 1, pgid
    for last_resort in (False, True):
        if last_resort:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(STOP_POLL_S)


def ours(pid: int, directory: Path) -> bool:
    """pid runs one of our commands: its command line names a path under directory (a pid
    file that outlived its process must not make us kill whoever has that pid now)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return str(directory).encode() in cmdline and alive(pid)


def stop_waves(directory: Path, waves: Sequence[tuple[list[Path], int, float]], *,
               spare_runuser: bool = False) -> int:
    """Stop, wave after wave, the process groups whose pid files are listed (those of our
    commands only): every group of a wave gets ``sig`` at once and up to ``timeout_s`` to
    go. Returns how many groups were stopped."""
    stopped = 0
    for pid_paths, sig, timeout_s in waves:
        pgids = []
        for path in pid_paths:
            pid = read_pid(path)
            if pid is not None and ours(pid, directory):
                with contextlib.suppress(ProcessLookupError):
                    pgids.append(os.getpgid(pid))
        for pgid in pgids:
            signal_group(pgid, sig, spare_runuser=spare_runuser)
        for pgid in pgids:
            stop_group(pgid, timeout_s)
            stopped += 1
    return stopped
