"""`onecard cluster up|status|down`: a real 3-node Patroni/etcd PostgreSQL cluster on loopback in
synchronous (quorum, strict) mode, and a failover by kill -9 of the leader's Patroni and
PostgreSQL that loses no acknowledged commit (issue 14, phase 1).

One cluster serves the module (starting one takes tens of seconds on two cores); the tests run
in file order and the last one stops it. Every wait is bounded; the fixture's finaliser stops
whatever is left, whichever test failed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from onecard.switch.cluster import patroni
from onecard.switch.cluster.procs import read_pid

from checker import Load, check_exactly_once, opening_balances
from conftest import STORE_FILE, start_switch

psycopg = pytest.importorskip("psycopg")

UP_TIMEOUT_S = 150.0                # `cluster up`'s own bound is 120 s
DOWN_TIMEOUT_S = 60.0
REPLICA_WAIT_S = 15.0
FAILOVER_WAIT_S = 90.0              # ttl 20 s + election + the standby's catch-up, with margin
ROWS_BEFORE_KILL = 100
ROWS_DURING_LOAD = 30               # acknowledged by the writer thread before the kill
ROWS_AFTER_FAILOVER = 10
POLL_S = 0.2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd not installed"),
]


def cli(*args: str, timeout_s: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onecard.switch.cli", "cluster", *args],
                          capture_output=True, text=True, timeout=timeout_s, env=env)


def processes_under(directory: Path) -> list[int]:
    """Pids whose command line names a path under directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                if str(directory).encode() in cmdline:
                    found.append(int(entry.name))
    return found


def members(info: dict) -> dict[str, dict]:
    """name -> member of GET /cluster from the first node that answers."""
    for url in info["rest_urls"]:
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(f"{url}/cluster", timeout=2) as resp:
                return {m["name"]: m for m in json.loads(resp.read())["members"]}
    raise AssertionError("no node's REST API answers")


@pytest.fixture(scope="module")
def cluster():
    # Under /tmp (1777), not pytest's 0700 tmp_path: the postgres user must reach DIR.
    directory = Path(tempfile.mkdtemp(prefix="onecard-cluster-"))
    try:
        up = cli("up", "--nodes", "3", "--dir", str(directory), timeout_s=UP_TIMEOUT_S)
        print(up.stdout, up.stderr)
        assert up.returncode == 0, up.stdout + up.stderr
        info = json.loads((directory / "cluster.json").read_text())
        yield directory, info, up.stdout
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            cli("down", "--dir", str(directory), timeout_s=DOWN_TIMEOUT_S)
        for pid in processes_under(directory):     # backstop: never leave a process behind
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


def test_up_refuses_a_directory_in_use(tmp_path):
    (tmp_path / "something").write_text("x")
    out = cli("up", "--dir", str(tmp_path), timeout_s=30)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "is not empty" in out.stderr, out.stderr


def test_up_without_etcd_is_one_line(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}        # nothing to find there
    out = cli("up", "--dir", str(tmp_path / "c"), timeout_s=30, env=env)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "etcd not found" in out.stderr, out.stderr
    assert not (tmp_path / "c").exists()               # checked before anything is created


def test_status_without_a_cluster_is_one_line(tmp_path):
    out = cli("status", "--dir", str(tmp_path), timeout_s=30)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "no " in out.stderr, out.stderr


def test_up_gives_one_leader_and_a_synchronous_standby(cluster):
    directory, info, stdout = cluster
    ports = ",".join(str(n["pg_port"]) for n in info["nodes"])
    assert f"host=127.0.0.1,127.0.0.1,127.0.0.1 port={ports}" in info["dsn"]
    assert "target_session_attrs=read-write" in info["dsn"]
    assert f"dsn: {info['dsn']}" in stdout
    assert len(info["rest_urls"]) == 3
    roles = {name: m["role"] for name, m in members(info).items()}
    assert sorted(roles) == ["node0", "node1", "node2"]
    assert list(roles.values()).count("leader") == 1, roles
    assert any(r in patroni.STANDBY_ROLES for r in roles.values()), roles
    status = cli("status", "--dir", str(directory), timeout_s=30)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "ready" in status.stdout


def test_synchronous_write_is_on_the_standbys(cluster):
    _, info, _ = cluster
    with psycopg.connect(info["dsn"], autocommit=True) as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        names = conn.execute("SHOW synchronous_standby_names").fetchone()[0]
        assert names.startswith("ANY 1 ("), names          # quorum mode, one standby
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        conn.execute("CREATE TABLE sync_probe (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO sync_probe VALUES (1, 'committed on two machines')")
        leader_port = conn.info.port
    standbys = [n for n in info["nodes"] if n["pg_port"] != leader_port]
    assert len(standbys) == 2
    for node in standbys:
        dsn = f"host=127.0.0.1 port={node['pg_port']} user=postgres dbname=postgres " \
              f"passfile={info['passfile']}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
            # on: flushed on a standby at COMMIT; replay (visibility) follows shortly.
            deadline = time.monotonic() + REPLICA_WAIT_S
            row = None
            while row is None and time.monotonic() < deadline:
                row = conn.execute("SELECT note FROM sync_probe WHERE id = 1").fetchone() \
                    if _table_exists(conn) else None
                time.sleep(0 if row else POLL_S)
            assert row == ("committed on two machines",), node["name"]


def _table_exists(conn) -> bool:
    return conn.execute("SELECT to_regclass('sync_probe') IS NOT NULL").fetchone()[0]


class Writer(threading.Thread):
    """Inserts ids 1, 2, ... through the multi-host DSN, one autocommit INSERT each, and keeps
    the ids whose COMMIT returned: the acknowledged ones. A failed INSERT's outcome is unknown
    (it may or may not have committed) and is neither counted nor retried; the writer
    reconnects and goes on with the next id."""

    def __init__(self, dsn: str, first_id: int, deadline: float):
        super().__init__(daemon=True)
        self.dsn, self.next_id, self.deadline = dsn, first_id, deadline
        self.acked: list[int] = []
        self.errors = 0
        self.killed_at: float | None = None
        self.first_write_after_kill: float | None = None
        self.port_after_kill: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        conn = None
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True)
                started = time.monotonic()
                conn.execute("INSERT INTO failover_rows (id) VALUES (%s)", (self.next_id,))
                now = time.monotonic()
                self.acked.append(self.next_id)
                # Only an INSERT begun after the kill returned can have reached the new
                # leader: one in flight at the kill may still be acknowledged by the old one.
                killed_at = self.killed_at
                if killed_at is not None and started > killed_at \
                        and self.first_write_after_kill is None:
                    self.first_write_after_kill, self.port_after_kill = now, conn.info.port
            except psycopg.Error:
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(POLL_S)
            self.next_id += 1
        if conn is not None:
            conn.close()


def kill_node(node: dict) -> None:
    """kill -9 a node's Patroni and its PostgreSQL (postmaster and backends) as if the machine
    died: Patroni first, so it cannot react to its PostgreSQL's death."""
    node_dir = Path(node["dir"])
    patroni_pid = read_pid(node_dir / "patroni.pid")
    postmaster_pid = read_pid(Path(node["data_dir"]) / "postmaster.pid")
    assert patroni_pid and postmaster_pid
    # Each runs in a session of its own: we start Patroni with a new session, Patroni starts
    # the postmaster in another (so that it survives Patroni). The postmaster's children
    # (backends, walsenders, ...) each call setsid() too (PostgreSQL's InitPostmasterChild):
    # killing its group alone left a backend that still committed the writer's next INSERT
    # on the old leader (seen once in CI), which a machine's death would not.
    postmaster_pgid = os.getpgid(postmaster_pid)
    assert os.getpgid(patroni_pid) == patroni_pid
    assert len({patroni_pid, postmaster_pgid, os.getpgid(0)}) == 3
    os.kill(postmaster_pid, signal.SIGSTOP)        # forks no new backend meanwhile
    children = _children(postmaster_pid)
    os.killpg(patroni_pid, signal.SIGKILL)
    os.killpg(postmaster_pgid, signal.SIGKILL)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _children(parent: int) -> list[int]:
    """Processes whose parent is ``parent`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                out.append(int(stat.parent.name))
    return out


def test_kill9_leader_fails_over_without_losing_acknowledged_rows(cluster):
    _, info, _ = cluster
    with psycopg.connect(info["dsn"], autocommit=True) as conn:
        conn.execute("CREATE TABLE failover_rows (id int PRIMARY KEY)")
        for row_id in range(1, ROWS_BEFORE_KILL + 1):
            conn.execute("INSERT INTO failover_rows (id) VALUES (%s)", (row_id,))
        old_leader_port = conn.info.port
    old_leader = next(n for n in info["nodes"] if n["pg_port"] == old_leader_port)
    assert members(info)[old_leader["name"]]["role"] == "leader"

    writer = Writer(info["dsn"], ROWS_BEFORE_KILL + 1, time.monotonic() + FAILOVER_WAIT_S)
    writer.start()
    try:
        deadline = time.monotonic() + FAILOVER_WAIT_S
        while len(writer.acked) < ROWS_DURING_LOAD and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(writer.acked) >= ROWS_DURING_LOAD, "no writes before the kill"
        kill_node(old_leader)
        writer.killed_at = time.monotonic()
        while (time.monotonic() < deadline and (
                writer.first_write_after_kill is None
                or writer.acked[-1] - writer.acked[0] < ROWS_DURING_LOAD + ROWS_AFTER_FAILOVER)):
            time.sleep(POLL_S)
    finally:
        writer.stop.set()
        writer.join(timeout=10)
    assert writer.first_write_after_kill is not None, f"no write within {FAILOVER_WAIT_S} s"
    assert writer.killed_at is not None
    assert writer.port_after_kill != old_leader_port
    failover_s = writer.first_write_after_kill - writer.killed_at
    print(f"\nfailover: kill -9 of {old_leader['name']} -> first write on the new leader "
          f"{failover_s:.2f} s ({writer.errors} failed attempts meanwhile)")

    acked = set(range(1, ROWS_BEFORE_KILL + 1)) | set(writer.acked)
    with psycopg.connect(info["dsn"], autocommit=True) as conn:
        assert conn.info.port != old_leader_port
        present = {r[0] for r in conn.execute("SELECT id FROM failover_rows")}
    lost = sorted(acked - present)
    assert not lost, f"{len(lost)} acknowledged rows lost: {lost[:20]}"
    roles = {name: m["role"] for name, m in members(info).items()}
    new_leaders = [name for name, role in roles.items() if role == "leader"]
    assert len(new_leaders) == 1 and new_leaders[0] != old_leader["name"], roles


FAILOVERS = 3
APPROVALS_BETWEEN_KILLS = 150
SWITCH_FAILOVER_WAIT_S = 150.0      # the switch's failover_timeout_s is longer still
REJOIN_TIMEOUT_S = 180.0


def leader(info: dict) -> dict:
    """The node taking writes now: where the multi-host DSN lands (what the switch uses;
    a node's REST view of the cluster can lag a restart)."""
    with psycopg.connect(info["dsn"], autocommit=True) as conn:
        port = conn.info.port
    return next(n for n in info["nodes"] if n["pg_port"] == port)


def rest_leader(info: dict) -> str | None:
    roles = {name: m["role"] for name, m in members(info).items()}
    return next((n for n, role in roles.items() if role == "leader"), None)


def start_dead_nodes(directory: Path, info: dict) -> None:
    for node in info["nodes"]:
        pid = read_pid(Path(node["dir"]) / "patroni.pid")
        if pid is None or not Path(f"/proc/{pid}").exists():
            out = cli("start", node["name"], "--dir", str(directory),
                      timeout_s=REJOIN_TIMEOUT_S + 30)
            assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def store_on_cluster(cluster, demo_dir, tmp_path_factory):
    """The demo data set imported into the cluster (database onecard), for switches to serve;
    the data directory's store file points them at it (tests/conftest.py)."""
    directory, info, _ = cluster
    start_dead_nodes(directory, info)
    with psycopg.connect(info["dsn"], autocommit=True) as conn:
        conn.execute("CREATE DATABASE onecard")
    dsn = info["dsn"].replace("dbname=postgres", "dbname=onecard")
    data_dir = tmp_path_factory.mktemp("on-cluster") / "data"
    shutil.copytree(demo_dir, data_dir)
    out = subprocess.run([sys.executable, "-m", "onecard.switch.cli", "db", "import",
                          str(data_dir), "--dsn", dsn], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (data_dir.parent / f"{data_dir.name}{STORE_FILE}").write_text(
        f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\nrequire_sync_standby = true\n'
        f"failover_timeout_s = {SWITCH_FAILOVER_WAIT_S + 60:.0f}\ncommit_timeout_s = 10\n")
    return data_dir


def test_switch_under_load_survives_three_primary_kills_losing_nothing(cluster,
                                                                        store_on_cluster,
                                                                        world):
    directory, info, _ = cluster
    sw = start_switch(store_on_cluster)
    try:
        cards = [world.card(nth=i)[0] for i in range(80)]
        opening = opening_balances(sw, world, cards)
        load = Load(sw, world, cards, reply_timeout_s=SWITCH_FAILOVER_WAIT_S, deadline_s=900)
        failover_s = []
        try:
            for k in range(FAILOVERS):
                assert load.wait_for(load.count() + APPROVALS_BETWEEN_KILLS, 120), \
                    f"no load before kill {k + 1}"
                time.sleep(0.3 * k)                    # a different moment of the commits
                node = leader(info)
                kill_node(node)
                killed_at = time.monotonic()
                deadline = killed_at + SWITCH_FAILOVER_WAIT_S
                while (load.first_answer_sent_after(killed_at) is None
                       and time.monotonic() < deadline and sw.proc.poll() is None):
                    time.sleep(POLL_S)
                answered = load.first_answer_sent_after(killed_at)
                assert answered is not None, f"no approval after kill {k + 1}: " + \
                    "".join(sw.output[-5:])
                failover_s.append(answered - killed_at)
                print(f"\nkill {k + 1} of {node['name']}: first approval on the new primary "
                      f"after {failover_s[-1]:.1f} s")
                start_dead_nodes(directory, info)      # back as a standby for the next kill
        finally:
            load.finish()
        assert sw.proc.poll() is None, "the switch stopped"
        debits = check_exactly_once(sw, world, load, opening)
        print(f"failover median {statistics.median(failover_s):.1f} s over {FAILOVERS} kills; "
              f"{len(load.approved)} approvals checked, {debits} debits journaled, "
              f"{load.errors} terminal errors")
        assert load.errors == 0, "a terminal lost its connection during a failover"
    finally:
        sw.stop()


PAUSE_PAST_FAILOVER_S = 5.0
DEMOTION_WAIT_S = 90.0


def signal_machine(node: dict, sig: int) -> None:
    """Signal every process of a node, as if its machine stopped or went on: Patroni's group,
    the postmaster and each of its children (PostgreSQL's backends, WAL senders and
    background processes each call setsid(): signalling the postmaster's group misses them,
    and a WAL sender left running would go on acknowledging for a 'paused' primary)."""
    os.killpg(read_pid(Path(node["dir"]) / "patroni.pid"), sig)
    postmaster = read_pid(Path(node["data_dir"]) / "postmaster.pid")
    assert postmaster
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == postmaster:
                    children.append(int(entry.name))
    assert children, "a running PostgreSQL has child processes"
    for pid in (postmaster, *children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def metric(sw, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{sw.http}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def test_a_paused_primary_never_confirms_an_approval_after_the_failover(cluster,
                                                                       store_on_cluster,
                                                                       world):
    directory, info, _ = cluster
    start_dead_nodes(directory, info)
    sw = start_switch(store_on_cluster)
    try:
        cards = [world.card(nth=i)[0] for i in range(80, 158)]
        opening = opening_balances(sw, world, cards)
        load = Load(sw, world, cards, reply_timeout_s=SWITCH_FAILOVER_WAIT_S, deadline_s=600)
        try:
            assert load.wait_for(APPROVALS_BETWEEN_KILLS, 120), "no load before the pause"
            old = leader(info)
            signal_machine(old, signal.SIGSTOP)     # the whole machine stops, sockets open
            paused_at = time.monotonic()
            try:
                deadline = paused_at + SWITCH_FAILOVER_WAIT_S
                while (load.first_answer_sent_after(paused_at) is None
                       and time.monotonic() < deadline):
                    time.sleep(POLL_S)
                answered = load.first_answer_sent_after(paused_at)
                assert answered is not None, "no approval while the primary was paused"
                time.sleep(PAUSE_PAST_FAILOVER_S)
            finally:
                signal_machine(old, signal.SIGCONT)
            print(f"\npaused {old['name']}: first approval on the new primary after "
                  f"{answered - paused_at:.1f} s")
            approvals_at_resume = load.count()
            deadline = time.monotonic() + DEMOTION_WAIT_S
            # Patroni demotes the old primary once it runs again (until then it takes
            # sessions as read-write, but no commit: its standbys follow the new leader).
            def rejoined() -> bool:       # (its key expired while paused: back once running)
                view = members(info).get(old["name"], {})
                return view.get("role") != "leader" and view.get("state") == "streaming"

            while time.monotonic() < deadline and (
                    rest_leader(info) in (None, old["name"]) or not rejoined()):
                time.sleep(POLL_S)
            assert rest_leader(info) not in (None, old["name"]), "the old primary leads again"
            assert rejoined(), "the old primary did not rejoin as a standby"
            assert load.wait_for(approvals_at_resume + APPROVALS_BETWEEN_KILLS, 120)
        finally:
            load.finish()
        assert metric(sw, "onecard_pg_commit_timeouts_total") >= 1   # cut, never guessed
        check_exactly_once(sw, world, load, opening)
        assert load.errors == 0
    finally:
        sw.stop()
    start_dead_nodes(directory, info)


def test_down_leaves_no_process_behind(cluster):
    directory, _, _ = cluster
    assert processes_under(directory), "the cluster should be running before down"
    out = cli("down", "--dir", str(directory), timeout_s=DOWN_TIMEOUT_S)
    assert out.returncode == 0, out.stdout + out.stderr
    assert processes_under(directory) == []
    again = cli("down", "--dir", str(directory), timeout_s=DOWN_TIMEOUT_S)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "stopped 0" in again.stdout
