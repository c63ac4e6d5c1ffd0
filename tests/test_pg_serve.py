"""`onecard serve` on the PostgreSQL store (issue 14): a paused switch replaced by another is
fenced and never confirms another approval; bad store configuration is one line at start.
The store's behaviour under terminals is the same tests as SQLite's, parametrised over both
(tests/test_server.py, test_durability.py, test_services.py, ...)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onecard.switch.store.pg.lease import take_over

from checker import Load, check_exactly_once, opening_balances
from conftest import STORE_FILE, AdminClient, assert_problem, on_postgresql, start_switch
from pg_fixtures import psycopg
from termsim import iso_decode
from test_server import iso_terminal, read_frames

FENCE_WAIT_S = 60


def serve_once(data_dir: Path, store: str, env: dict | None = None
               ) -> subprocess.CompletedProcess:
    cfg = data_dir.parent / "serve.toml"
    cfg.write_text(f"[store]\nbackend = \"postgresql\"\n{store}\n")
    return subprocess.run([sys.executable, "-m", "onecard.switch.cli", "serve", "--data-dir",
                           str(data_dir), "--config", str(cfg), "--iso8583-port", "0",
                           "--native-port", "0", "--http-port", "0"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize(("store", "expected"), [
    ('dsn = "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2"', "cannot connect"),
    ("WRONG_PASSWORD", "password authentication failed"),
    ("SINGLE_NODE", "no synchronous standby"),
])
def test_bad_store_configuration_is_one_line_at_start(pg_server, demo_dir, tmp_path, store,
                                                      expected):
    data_dir = tmp_path / "data"
    shutil.copytree(demo_dir, data_dir)
    dsn = on_postgresql(data_dir, pg_server, f"bad_{len(store)}")
    if store == "WRONG_PASSWORD":
        store = f'dsn = "{dsn.replace("password=", "password=not-")}"'
    elif store == "SINGLE_NODE":                 # require_sync_standby defaults to true
        store = f'dsn = "{dsn}"'
    out = serve_once(data_dir, store)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and expected in out.stderr, out.stderr
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.slow
def test_a_paused_switch_replaced_by_another_is_fenced(pg_server, demo_dir, world, tmp_path):
    first = tmp_path / "a" / "data"
    shutil.copytree(demo_dir, first)
    on_postgresql(first, pg_server, "fenced")
    old = start_switch(first)
    cards = [world.card(nth=i)[0] for i in range(12)]
    opening = opening_balances(old, world, cards)
    load = Load(old, world, cards, terminals=4, reply_timeout_s=5, deadline_s=60)
    assert load.wait_for(200, 30)
    late_sock, late = iso_terminal(old, world, 31, 9)     # signed on before the pause
    os.kill(old.proc.pid, signal.SIGSTOP)
    try:
        load.finish()                    # its terminals give up on the paused switch
        late_sock.sendall(late.purchase(cards[0], 100))  # read by the old switch on waking
        second = tmp_path / "b" / "data"                 # another machine's local directory
        second.mkdir(parents=True)
        shutil.copy(first.parent / f"{first.name}{STORE_FILE}",
                    second.parent / f"{second.name}{STORE_FILE}")
        new = start_switch(second)
    finally:
        os.kill(old.proc.pid, signal.SIGCONT)
    try:
        late_sock.settimeout(FENCE_WAIT_S)
        try:
            replies = [iso_decode(f) for f in read_frames(late_sock, 1)]
        except OSError:                                  # dropped, as it must be
            replies = []
        assert all(r["39"] != "00" for r in replies), replies
        assert old.proc.wait(FENCE_WAIT_S) != 0
        output = old.text()
        assert "fenced" in output, output[-2000:]
        assert check_exactly_once(new, world, load, opening) >= 200
    finally:
        new.stop()
        late_sock.close()


@pytest.mark.slow
def test_the_server_restarting_under_load_loses_nothing(pg_server, demo_dir, world, tmp_path):
    """Every commit in flight when PostgreSQL went down has an unknown outcome: resolved once
    it is back (found, or written), never answered before."""
    data_dir = tmp_path / "data"
    shutil.copytree(demo_dir, data_dir)
    on_postgresql(data_dir, pg_server, "restarted")
    sw = start_switch(data_dir)
    try:
        cards = [world.card(nth=i)[0] for i in range(16)]
        opening = opening_balances(sw, world, cards)
        load = Load(sw, world, cards, reply_timeout_s=60, deadline_s=120)
        try:
            assert load.wait_for(300, 30)
            pg_server.halt()                          # immediate: the commits in flight die
            down_at = time.monotonic()
            time.sleep(2)
            pg_server.launch()
            assert load.wait_for(load.count() + 300, 60)
            assert load.first_answer_sent_after(down_at) is not None
        finally:
            load.finish()
        assert check_exactly_once(sw, world, load, opening) >= 600
        assert load.errors == 0
    finally:
        sw.stop()


def test_a_switch_that_fails_to_start_does_not_fence_the_one_serving(pg_server, demo_dir,
                                                                    world, tmp_path):
    first = tmp_path / "a" / "data"
    shutil.copytree(demo_dir, first)
    dsn = on_postgresql(first, pg_server, "not_fenced")
    serving = start_switch(first)
    try:
        sock, t = iso_terminal(serving, world, 31, 1)
        second = tmp_path / "b" / "data"
        second.mkdir(parents=True)
        out = serve_once(second, f'dsn = "{dsn}"\nrequire_sync_standby = false',
                         env={"ONECARD_KEK": "77" * 32})           # the wrong key
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        (paid,) = t.send(t.purchase(world.card()[0], 100))
        assert paid["39"] == "00"                     # still the lease holder
        sock.close()
    finally:
        serving.stop()


def test_admin_writes_of_a_switch_taken_over_are_refused_503(pg_server, demo_dir, world,
                                                              tmp_path):
    """Reference rows (filings, banks, the admin log) are fenced by the lease like the
    journal: the switch taken over changes nothing, and says so with a problem document."""
    data_dir = tmp_path / "data"
    shutil.copytree(demo_dir, data_dir)
    dsn = on_postgresql(data_dir, pg_server, "admin_fenced")
    sw = start_switch(data_dir)
    try:
        api = AdminClient(sw)
        pan = world.card(31)[0]
        assert api.post("/admin/filings", {"card": pan, "province": 32}).status == 201
        with psycopg.connect(dsn) as conn:
            before = conn.execute("SELECT count(*) FROM filings").fetchone()
            logged = conn.execute("SELECT count(*) FROM admin_log").fetchone()
        take_over(dsn, require_sync=False, holder="another switch")
        refused = api.post("/admin/filings", {"card": world.card(31, nth=1)[0],
                                              "province": 32})
        problem = assert_problem(refused, 503)
        assert "fenced" in problem["detail"]
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM filings").fetchone() == before
            assert conn.execute("SELECT count(*) FROM admin_log").fetchone() == logged
        assert api.get("/admin/audit").status == 200           # reads still answer
    finally:
        sw.stop()
