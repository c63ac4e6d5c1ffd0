"""A full disk (issue 13), on a real filesystem: a small tmpfs holding the data directory,
filled up by a filler file while the switch runs. The switch stops approving (fast 96s,
/readyz 503, onecard_journal_writable 0), keeps its process and connections, never answers a
decided request before its record is durable, and resumes by itself once the filler is
deleted; after a restart every approval is in the journal and money is conserved. And a
switch refuses to start, with one line, on a data directory that cannot take a commit."""

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from onecard.core.state import KIND_PURCHASE, TERM_POS
from onecard.switch.store import sqlite

from conftest import start_switch
from termsim import IsoTerminal, iso_decode, socket_exchange
from test_server import read_frames

pytestmark = pytest.mark.slow

TMPFS_MB = 48


@pytest.fixture
def small_disk(tmp_path):
    """A TMPFS_MB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> Path:
    """Write a filler file until the filesystem is full (unbuffered: every byte that fits)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            chunk = b"\xa5" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def http(sw, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sw.http}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def gauge(sw, name: str, **labels) -> float:
    _, text = http(sw, "/metrics")
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(name)


def eventually(check, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_full_disk_refuses_then_resumes_without_losing_an_approval(small_disk, demo_dir, world):
    data = small_disk / "data"
    shutil.copytree(demo_dir, data)
    cfg = small_disk.parent / "onecard.toml"
    cfg.write_text("[store]\nfull_retry_ms = 100\nfree_mb_min = 1\n")
    sw = start_switch(data, "--config", str(cfg))
    filler = None
    try:
        sock_a, ex_a = socket_exchange("127.0.0.1", sw.iso, 2)
        a = IsoTerminal(world.terminal(TERM_POS, 31, 0), ex_a)
        sock_b, ex_b = socket_exchange("127.0.0.1", sw.iso, 2)
        b = IsoTerminal(world.terminal(TERM_POS, 31, 1), ex_b)
        assert a.signon()["39"] == "00" and b.signon()["39"] == "00"
        pan, _ = world.card()
        (opening,) = b.send(b.balance(pan))
        opening_fen = int(opening["54"][8:])
        approved = [r for r in a.send(*[a.purchase(pan, 10) for _ in range(5)])]
        assert all(r["39"] == "00" for r in approved)

        filler = fill(small_disk)
        # A keeps sending until a commit fails; its replies wait for durability.
        sent_a = 0
        for _ in range(200):
            sock_a.sendall(b"".join(a.purchase(pan, 10) for _ in range(50)))
            sent_a += 50
            time.sleep(0.05)
            if gauge(sw, "onecard_journal_writable") == 0:
                break
        assert gauge(sw, "onecard_journal_writable") == 0
        status, body = http(sw, "/readyz")
        assert status == 503 and "disk full" in body
        status, _ = http(sw, "/healthz")
        assert status == 200                           # alive, only not ready
        # B has nothing waiting: its requests are refused at once, changing nothing.
        for r in b.send(*[b.purchase(pan, 10) for _ in range(3)]):
            assert r["39"] == "96"
        assert gauge(sw, "onecard_requests_shed_total", protocol="iso8583",
                     reason="journal_unwritable") >= 3
        sock_a.settimeout(0.5)
        with pytest.raises(TimeoutError):              # nothing leaves before durability
            sock_a.recv(1)
        sock_a.settimeout(60)

        filler.unlink()
        filler = None
        replies_a = [iso_decode(f) for f in read_frames(sock_a, sent_a)]
        assert eventually(lambda: http(sw, "/readyz")[0] == 200)
        assert gauge(sw, "onecard_journal_writable") == 1
        assert gauge(sw, "onecard_journal_full_retries_total") >= 1
        codes = {r["39"] for r in replies_a}
        assert codes <= {"00", "96"} and "00" in codes
        approved += [r for r in replies_a if r["39"] == "00"]
        (after,) = b.send(b.purchase(pan, 10))
        assert after["39"] == "00"
        approved.append(after)
        sock_a.close()
        sock_b.close()
    finally:
        if filler is not None:
            filler.unlink()
        assert sw.stop() == 0
    assert any("journal not writable" in line for line in sw.text().splitlines())

    sw = start_switch(data, "--config", str(cfg))
    try:
        conn = sqlite.connect(sqlite.db_path(data), readonly=True)
        recs, nos = sqlite.journal_records(conn)
        conn.close()
        debits = (recs["kind"] == KIND_PURCHASE) & (recs["rc"] == 0)
        journaled = {int(no) for no in nos[debits]}
        for r in approved:                             # every approval is durable
            assert int(r["37"]) in journaled
        sock, ex = socket_exchange("127.0.0.1", sw.iso, 2)
        t = IsoTerminal(world.terminal(TERM_POS, 31, 2), ex)
        assert t.signon()["39"] == "00"
        (now,) = t.send(t.balance(pan))
        assert int(now["54"][8:]) == opening_fen - 10 * len(approved)   # conserved
        assert len(journaled) >= len(approved)
        sock.close()
    finally:
        sw.stop()


def test_start_refuses_a_data_directory_that_cannot_take_a_commit(small_disk, demo_dir):
    data = small_disk / "data"
    shutil.copytree(demo_dir, data)
    filler = fill(small_disk)
    out = subprocess.run([sys.executable, "-m", "onecard.switch.cli", "serve", "--data-dir",
                          str(data), "--iso8583-port", "0", "--native-port", "0",
                          "--http-port", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("onecard:")]
    assert len(lines) == 1 and "cannot take a commit" in lines[0], out.stderr
    filler.unlink()
    os.sync()
