"""Shared fixtures: a small demo data set, engines over it, and real switch processes."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from onecard.core.engine import ISO8583, NATIVE, Engine
from onecard.core.state import CARD_ACTIVE, FN_FINANCIAL, FN_MEDICAL, FN_TRANSPORT, TERM_POS
from onecard.switch import demo
from onecard.switch.security import first_tokens
from onecard.switch.store import loader
from onecard.switch.terminals import TerminalInfo, read_terminals

sys.path.insert(0, str(Path(__file__).parent))

from termsim import IsoTerminal, NativeTerminal, socket_exchange

DEMO_CARDS = 4000
# Data sets are encrypted under a key-encryption key kept outside the data directory. Tests
# copy data directories around (shutil.copytree), so the session's data sets share one KEK
# from the environment; tests/test_at_rest.py unsets it to test the key file.
TEST_KEK = "5e" * 32
os.environ.setdefault("ONECARD_KEK", TEST_KEK)
# Operator tokens are made by a switch's first start and, its stdout being a pipe, written to
# a 0600 file it names (the tokens file keeps hashes): {data directory: {role: token}}, filled
# by start_switch.
TOKENS: dict[str, dict[str, str]] = {}

# The admin API's routes that change something, with the role each needs: every one must
# answer bad bodies with a problem document (tests/test_admin.py, tests/test_admin_fuzz.py).
ADMIN_WRITES = (   # (method, path with {pan}, role)
    ("POST", "/admin/catalogue", "catalogue"),
    ("PATCH", "/admin/catalogue/TOUR-SCENIC", "catalogue"),
    ("POST", "/admin/cards/{pan}/bank", "card"),
    ("POST", "/admin/cards/{pan}/topup", "finance"),
    ("POST", "/admin/filings", "card"),
    ("POST", "/admin/disbursements", "finance"),
)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "data"
    demo.generate(path, cards=DEMO_CARDS, seed=7, progress=lambda _: None)
    return path


@pytest.fixture(scope="session")
def terminals(demo_dir) -> list[TerminalInfo]:
    return read_terminals(demo_dir)


class World:
    """An engine over a fresh copy of the demo state, with helpers to find cards and
    terminals and to talk to the engine as terminals do."""

    def __init__(self, data_dir: Path, terminals: list[TerminalInfo], **load_options) -> None:
        self.data_dir = data_dir
        loaded = loader.load(data_dir, **load_options)
        self.state = loaded.state
        self.engine = Engine(self.state, next_record_no=loaded.next_record_no)
        self.terminals = terminals
        regions = self.state.regions
        self.card_province = regions["province"][self.state.cards["region"]]
        import sqlite3

        self.keys = loaded.keys
        conn = sqlite3.connect(data_dir / "onecard.db")
        self.provinces = [p for (p,) in conn.execute(
            "SELECT DISTINCT province FROM regions ORDER BY province")]
        self.names = {idx: self.keys.open_text("cards", "holder_name", idx, name)
                      for idx, name in conn.execute("SELECT idx, holder_name FROM cards")}
        conn.close()

    def holder(self, idx: int) -> tuple[str, str]:
        """The name and ID number of card idx's holder, opened from the cards table."""
        ((name, ident),) = self.query("SELECT holder_name, id_number FROM cards WHERE idx = ?",
                                      idx)
        return (self.keys.open_text("cards", "holder_name", idx, name),
                self.keys.open_text("cards", "id_number", idx, ident))

    def query(self, sql: str, *args) -> list:
        """Rows from the data set's database, read only (the expected values of a test come
        from the same tables the switch loads, not from copies of them)."""
        import sqlite3

        conn = sqlite3.connect(f"file:{self.data_dir / 'onecard.db'}?mode=ro", uri=True)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def exchange(self, proto: int):
        def run(data: bytes) -> bytes:
            consumed, replies, _, _ = self.engine.process(proto, data)
            assert consumed == len(data)
            return replies
        return run

    def terminal(self, kind: int, province: int = 31, index: int = 0) -> TerminalInfo:
        found = [t for t in self.terminals if t.kind == kind and t.province == province]
        return found[index]

    def iso(self, province: int = 31, index: int = 0, signon: bool = True) -> IsoTerminal:
        t = IsoTerminal(self.terminal(TERM_POS, province, index), self.exchange(ISO8583))
        if signon:
            assert t.signon()["39"] == "00"
        return t

    def native(self, kind: int, province: int = 31, index: int = 0,
               signon: bool = True) -> NativeTerminal:
        t = NativeTerminal(self.terminal(kind, province, index), self.exchange(NATIVE))
        if signon:
            assert t.signon().rc == "00"
        return t

    def province_index(self, code: int) -> int:
        return self.provinces.index(code)

    def card(self, province: int = 31, *, status: int = CARD_ACTIVE, functions: int | None = None,
             min_balance: int = 100_000, nth: int = 0, **account) -> tuple[str, int]:
        """A card number (string) and its index matching the criteria."""
        c, a = self.state.cards, self.state.accounts
        today = dt.date.today()
        ok = (self.card_province == self.province_index(province)) & (c["status"] == status)
        ok &= c["expiry_yymm"] >= (today.year % 100) * 100 + today.month
        if functions is None:
            ok &= c["functions"] == FN_FINANCIAL | FN_TRANSPORT | FN_MEDICAL
        else:
            ok &= c["functions"] == functions
        ok &= a["balance_fen"][c["account"]] >= min_balance
        for key, want in account.items():
            ok &= want(a[key][c["account"]])
        idx = int(np.flatnonzero(ok)[nth])
        return str(int(c["pan"][idx])), idx

    def balance(self, idx: int) -> int:
        return int(self.state.accounts["balance_fen"][self.state.cards["account"][idx]])

    def set_balance(self, idx: int, fen: int) -> None:
        self.state.accounts["balance_fen"][self.state.cards["account"][idx]] = fen


@pytest.fixture
def world(demo_dir, terminals) -> World:
    return World(demo_dir, terminals)


# ---- real switch processes -------------------------------------------------------------------

READY_TIMEOUT_S = 60


@dataclass
class SwitchProcess:
    proc: subprocess.Popen
    data_dir: Path
    iso: int
    native: int
    http: int
    output: list[str]
    drain: threading.Thread | None = None

    def text(self, timeout_s: float = 60) -> str:
        """Everything the process wrote, once it has ended (stdout and stderr)."""
        if self.drain is not None:
            self.drain.join(timeout_s)
        return "".join(self.output)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


NO_SHEDDING = "[server]\nlatency_budget_ms = 0\n"
OUTPUT_LINES_MAX = 100_000


def _drain(stream, output: list[str]) -> None:
    for line in stream:
        output.append(line)
        if len(output) > OUTPUT_LINES_MAX:
            del output[:OUTPUT_LINES_MAX // 2]



def start_switch(data_dir: Path, *extra: str, env: dict | None = None,
                 preexec_fn=None) -> SwitchProcess:
    """A switch process. Without a --config of the test's own, load shedding is off: tests
    that count approvals must not depend on how busy the machine running them is (a shared
    VM's own latency can exceed the 50 ms budget); tests/test_shedding.py tests it."""
    if "--config" not in extra:
        cfg = data_dir.parent / f"{data_dir.name}-test.toml"
        cfg.write_text(NO_SHEDDING + store_config(data_dir))
        extra = (*extra, "--config", str(cfg))
    cmd = [sys.executable, "-m", "onecard.switch.cli", "serve", "--data-dir", str(data_dir),
           "--iso8583-port", "0", "--native-port", "0", "--http-port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)
    ports: dict[str, int] = {}
    output: list[str] = []
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        output.append(line)
        m = re.match(r"onecard: listening (\w+) [\d.]+:(\d+)", line)
        if m:
            ports[m.group(1)] = int(m.group(2))
        m = re.match(r"onecard: operator tokens in (\S+) ", line)
        if m:       # a first start: its tokens are in that file (0600), never on stdout
            for roles, token in first_tokens.read(Path(m.group(1))).values():
                for role in roles.split(","):
                    TOKENS.setdefault(str(data_dir), {})[role] = token
        if line.startswith("onecard: ready"):
            # Read on, or a switch that logs more than a pipe holds would block writing.
            drain = threading.Thread(target=_drain, args=(proc.stdout, output), daemon=True)
            drain.start()
            return SwitchProcess(proc, data_dir, ports["iso8583"], ports["native"],
                                 ports["http"], output, drain)
    proc.kill()
    raise RuntimeError("switch did not start:\n" + "".join(output) + proc.stdout.read())


# ---- the store behind a switch process: SQLite, or PostgreSQL -------------------------------
# A switch test (its switch from switch_dir or running_switch) runs on both stores with
#   @ON_BOTH_STORES
# ("postgresql": the data set imported into a database of its own on one throwaway server
# shared by the session, the switch configured with [store] backend = "postgresql").

BACKENDS = ("sqlite", "postgresql")
ON_BOTH_STORES = pytest.mark.parametrize("backend", BACKENDS, indirect=True)
STORE_FILE = "-store.toml"            # beside the data directory: the test's [store] section


def store_config(data_dir: Path) -> str:
    path = data_dir.parent / f"{data_dir.name}{STORE_FILE}"
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="session")
def pg_server():
    from onecard.bench import pg_local

    pytest.importorskip("psycopg", reason="the PostgreSQL store's tests need psycopg 3")
    if pg_local.bin_dir() is None:
        pytest.skip("no PostgreSQL server installed (.ci/run installs Debian's postgresql)")
    server = pg_local.start(durable=False)
    yield server
    server.stop()


@pytest.fixture
def backend(request) -> str:
    return getattr(request, "param", "sqlite")


def on_postgresql(data_dir: Path, server, name: str) -> str:
    """Import the data set into a fresh database; configure its switch to serve from it."""
    import psycopg

    from onecard.switch import cli

    name = re.sub(r"[^a-z0-9_]", "_", name.lower())[:50]
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = server.dsn_for(name)
    assert cli.main(["db", "import", str(data_dir), "--dsn", dsn]) == 0
    (data_dir.parent / f"{data_dir.name}{STORE_FILE}").write_text(
        f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\nrequire_sync_standby = false\n')
    return dsn


@pytest.fixture
def switch_dir(demo_dir, tmp_path, backend, request) -> Path:
    """A private copy of the demo data set for a switch process to own (imported into
    PostgreSQL when the test runs on that backend)."""
    path = tmp_path / "data"
    shutil.copytree(demo_dir, path)
    if backend == "postgresql":
        on_postgresql(path, request.getfixturevalue("pg_server"), request.node.name)
    return path


@pytest.fixture
def running_switch(switch_dir):
    sw = start_switch(switch_dir)
    yield sw
    sw.stop()


# ---- admin API helpers (tests/test_admin*.py) ------------------------------------------------


def copy_demo(demo_dir: Path, tmp_path_factory, name: str = "data") -> Path:
    """A private copy of the demo data set (for module-scoped switches)."""
    path = tmp_path_factory.mktemp(name) / "data"
    shutil.copytree(demo_dir, path)
    return path


def pytest_generate_tests(metafunc) -> None:
    # A module's shared switch (sw) runs on the stores its STORES names (default SQLite).
    if "module_backend" in metafunc.fixturenames:
        metafunc.parametrize("module_backend", getattr(metafunc.module, "STORES", ("sqlite",)),
                             indirect=True, scope="module")


@pytest.fixture(scope="module")
def module_backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def sw(demo_dir, tmp_path_factory, request, module_backend):
    """A switch process shared by one module's tests, on that module's own copy of the demo
    data (tests sharing it take their terminals and cards from ``supply``)."""
    data_dir = copy_demo(demo_dir, tmp_path_factory, request.module.__name__)
    if module_backend == "postgresql":
        on_postgresql(data_dir, request.getfixturevalue("pg_server"),
                      f"{request.module.__name__}_{module_backend}")
    s = start_switch(data_dir)
    yield s
    s.stop()


@dataclass
class HttpReply:
    status: int
    headers: dict
    text: str

    def json(self):
        return json.loads(self.text)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


class AdminClient:
    """The admin API of a switch process over urllib, with the operator tokens the switch
    created in its data directory (one operator per role)."""

    def __init__(self, sw: SwitchProcess) -> None:
        self.sw = sw

    def token(self, role: str) -> str:
        return TOKENS[str(self.sw.data_dir)][role]

    def call(self, method: str, path: str, body=None, *, role: str | None = None,
             auth: str | None = None, raw: bytes | None = None) -> HttpReply:
        headers = {}
        if role is not None:
            headers["Authorization"] = f"Bearer {self.token(role)}"
        if auth is not None:
            headers["Authorization"] = auth
        data = raw if raw is not None else (
            json.dumps(body, ensure_ascii=False).encode() if body is not None else None)
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(f"http://127.0.0.1:{self.sw.http}{path}", data=data,
                                     method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return HttpReply(r.status, dict(r.headers), r.read().decode())
        except urllib.error.HTTPError as e:
            return HttpReply(e.code, dict(e.headers), e.read().decode())

    def get(self, path: str, role: str | None = "ops", **kw) -> HttpReply:
        return self.call("GET", path, role=role, **kw)

    def post(self, path: str, body=None, role: str | None = "card", **kw) -> HttpReply:
        return self.call("POST", path, body, role=role, **kw)

    def view(self, pan: str) -> dict:
        """The card view (ops role); fails the test unless 200."""
        r = self.get(f"/admin/cards/{pan}")
        assert r.status == 200, r.text
        return r.json()


def assert_problem(reply: HttpReply, status: int) -> dict:
    """An RFC 9457 problem document with this status; returns it."""
    assert reply.status == status, (reply.status, reply.text)
    assert reply.content_type.startswith("application/problem+json"), reply.content_type
    doc = reply.json()
    assert {"type", "title", "status", "detail"} <= set(doc), doc
    assert doc["status"] == status
    return doc


class Supply:
    """Terminals (by catalogue application) and cards of the demo set, each handed out once,
    so tests sharing a switch never share a terminal session, its sequence numbers or a card."""

    def __init__(self, data_dir: Path, terminals: list[TerminalInfo]) -> None:
        import sqlite3

        conn = sqlite3.connect(data_dir / "onecard.db")
        self.apps = dict(conn.execute("SELECT tid, app_code FROM terminals"))
        conn.close()
        self.terminals = terminals
        self.world = World(data_dir, terminals)
        self.used_terminals: set[str] = set()
        self.used_cards: set[int] = set()

    def terminal(self, app: str, province: int = 31) -> TerminalInfo:
        for t in self.terminals:
            if (self.apps[t.tid] == app and t.province == province
                    and t.tid not in self.used_terminals):
                self.used_terminals.add(t.tid)
                return t
        raise LookupError(f"no unused {app} terminal in province {province}")

    def card(self, province: int = 31, **criteria) -> str:
        """An unused card number matching World.card's criteria."""
        nth = 0
        while True:
            pan, idx = self.world.card(province, nth=nth, **criteria)
            if idx not in self.used_cards:
                self.used_cards.add(idx)
                return pan
            nth += 1


def iso_session(sw: SwitchProcess, info: TerminalInfo):
    """A signed-on ISO 8583 terminal on its own TCP connection: (socket, terminal)."""
    sock, exchange = socket_exchange("127.0.0.1", sw.iso, 2)
    t = IsoTerminal(info, exchange)
    assert t.signon()["39"] == "00"
    return sock, t


def native_session(sw: SwitchProcess, info: TerminalInfo):
    """A signed-on native terminal on its own TCP connection: (socket, terminal)."""
    sock, exchange = socket_exchange("127.0.0.1", sw.native, 4)
    t = NativeTerminal(info, exchange)
    assert t.signon().rc == "00"
    return sock, t


def iso_balance(t: IsoTerminal, pan: str) -> int:
    """The financial balance in fen from a balance inquiry (field 54, CUPS layout)."""
    (reply,) = t.send(t.balance(pan))
    assert reply["39"] == "00", reply["39"]
    sign = -1 if reply["54"][7] == "D" else 1
    return sign * int(reply["54"][8:])


@pytest.fixture(scope="module")
def supply(demo_dir, terminals, module_backend) -> Supply:
    # One per store the module's switch runs on: each switch starts from the same data.
    return Supply(demo_dir, terminals)


@pytest.fixture
def api(sw) -> AdminClient:
    return AdminClient(sw)
