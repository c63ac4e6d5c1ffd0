"""Connection and memory limits (issue 13): descriptor exhaustion leaves the admin port
working and is counted; a frame is timed from its first byte; partial frames over the global
budget are cut; a native connection's first frame is small until it authenticates."""

import resource
import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from onecard.core.state import TERM_BUS_READER, TERM_POS

from conftest import start_switch
from termsim import IsoTerminal, NativeTerminal, socket_exchange

pytestmark = pytest.mark.slow

FD_LIMIT = 256


def metrics(sw) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{sw.http}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def eventually(check, timeout_s: float = 30.0):
    """Poll ``check`` until it returns a true value (generous bound, never a timing test)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        sock.settimeout(10)
        return sock.recv(100) == b""
    except (ConnectionResetError, TimeoutError):
        return True


def low_fd_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def test_descriptor_exhaustion_keeps_the_admin_port_and_recovers(switch_dir, world, tmp_path):
    """A switch limited to 256 descriptors: 400 idle sockets fill what terminals may use; the
    rest are closed at once and counted, /metrics and the admin API still answer, and once
    the idle sockets go a new terminal is served. (All from one address, as through a
    gateway: the per-address cap is raised so that the descriptors run out first.)"""
    cfg = tmp_path / "gateway.toml"
    cfg.write_text("[server]\nlatency_budget_ms = 0\nconnections_per_peer_max = 100000\n")
    sw = start_switch(switch_dir, "--config", str(cfg), preexec_fn=low_fd_limit)
    idle = []
    try:
        for _ in range(400):
            idle.append(socket.create_connection(("127.0.0.1", sw.iso), timeout=10))
        refused = eventually(lambda: metrics(sw).get(
            ("onecard_connections_refused_total", (("reason", "descriptors"),)), 0) > 0)
        assert refused
        m = metrics(sw)
        assert m[("onecard_connections", (("protocol", "iso8583"),))] < FD_LIMIT
        with urllib.request.urlopen(f"http://127.0.0.1:{sw.http}/healthz", timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{sw.http}/catalogue", timeout=10) as r:
            assert r.status == 200
        # A new terminal now is refused: closed at once, not left hanging.
        extra = socket.create_connection(("127.0.0.1", sw.iso), timeout=10)
        assert closed_by_peer(extra)
        extra.close()
        for s in idle:
            s.close()
        idle.clear()
        eventually(lambda: metrics(sw)[("onecard_connections", (("protocol", "iso8583"),))] == 0)
        sock, exchange = socket_exchange("127.0.0.1", sw.iso, 2)
        t = IsoTerminal(world.terminal(TERM_POS, 31, 0), exchange)
        assert t.signon()["39"] == "00"
        sock.close()
    finally:
        for s in idle:
            s.close()
        sw.stop()
    log = sw.text()
    # Rate-limited: 150+ refusals, a handful of lines at most.
    assert 1 <= log.count("connections refused") <= 3, log[-2000:]


def assert_one_address_capped_at_3(sw) -> list[socket.socket]:
    """127.0.0.1 holds 3 connections and its 4th is closed at once, while 127.0.0.2 is still
    served; the sockets, for the caller to close."""
    mine = [socket.create_connection(("127.0.0.1", sw.iso), timeout=10) for _ in range(3)]
    eventually(lambda: metrics(sw)[("onecard_connections", (("protocol", "iso8583"),))] == 3)
    fourth = socket.create_connection(("127.0.0.1", sw.iso), timeout=10)
    assert closed_by_peer(fourth)
    other = socket.create_connection(("127.0.0.1", sw.iso), timeout=10,
                                     source_address=("127.0.0.2", 0))
    other.settimeout(0.5)
    with pytest.raises(TimeoutError):
        other.recv(1)                                    # another address is served
    return [*mine, fourth, other]


def test_connections_per_peer_are_capped(switch_dir, tmp_path):
    cfg = tmp_path / "onecard.toml"
    cfg.write_text("[server]\nconnections_per_peer_max = 3\n")
    sw = start_switch(switch_dir, "--config", str(cfg))
    try:
        opened = assert_one_address_capped_at_3(sw)
        assert metrics(sw)[("onecard_connections_refused_total", (("reason", "peer_full"),))] == 1
        for s in opened:
            s.close()
    finally:
        sw.stop()


def test_by_default_one_address_holds_a_quarter_of_the_connections(switch_dir, tmp_path):
    """No per-peer setting: one address (a reconnect loop, a hostile peer) gets a quarter of
    connections_max and the others are still served."""
    cfg = tmp_path / "onecard.toml"
    cfg.write_text("[server]\nconnections_max = 12\n")
    sw = start_switch(switch_dir, "--config", str(cfg))
    try:
        for s in assert_one_address_capped_at_3(sw):
            s.close()
    finally:
        sw.stop()
    assert "3 from one address" in sw.text()


def test_a_trickling_sender_is_closed_from_the_frames_first_byte(switch_dir, tmp_path, world):
    """One byte every 0.3 s never leaves the connection idle, but the frame it sends is
    unfinished 2 s after its first byte: closed. (Before, the timer restarted at every byte.)"""
    cfg = tmp_path / "onecard.toml"
    cfg.write_text("[server]\npartial_frame_timeout_s = 2\n")
    sw = start_switch(switch_dir, "--config", str(cfg))
    try:
        slow = socket.create_connection(("127.0.0.1", sw.iso), timeout=10)
        slow.sendall(b"\x00\x60")                        # a 96-byte frame follows, slowly
        closed = False
        for _ in range(100):                             # 30 s at most
            try:
                slow.sendall(b"\x60")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.3)
            if metrics(sw)[("onecard_idle_connections_closed_total", ())] >= 1:
                closed = True
                break
        assert closed
        assert closed_by_peer(slow)
        slow.close()
        sock, exchange = socket_exchange("127.0.0.1", sw.iso, 2)   # others are served
        t = IsoTerminal(world.terminal(TERM_POS, 31, 0), exchange)
        assert t.signon()["39"] == "00"
        sock.close()
    finally:
        sw.stop()


def test_partial_frames_over_the_budget_are_cut_down_to_it(switch_dir, tmp_path, world):
    """20 signed-on native connections each send 90% of a 200 KiB frame; the budget holds
    1 MiB of partial frames, so the biggest holders are closed until the rest fit."""
    cfg = tmp_path / "onecard.toml"
    cfg.write_text("[server]\npartial_bytes_max = 1048576\n")
    sw = start_switch(switch_dir, "--config", str(cfg))
    try:
        held = []
        for i in range(20):
            sock, exchange = socket_exchange("127.0.0.1", sw.native, 4)
            t = NativeTerminal(world.terminal(TERM_BUS_READER, 31, i % 2), exchange)
            assert t.signon().rc == "00"                 # authenticated: full frame size
            sock.sendall((200 << 10).to_bytes(4, "big") + b"\x94" * (180 << 10))
            held.append(sock)
        m = eventually(lambda: (lambda m: m if m[("onecard_partial_frame_bytes", ())]
                                <= (1 << 20) and m[
            ("onecard_partial_frame_connections_closed_total", (("reason", "budget"),))] > 0
            else None)(metrics(sw)))
        assert m, metrics(sw)
        closed = sum(closed_by_peer(s) for s in held[:5])
        assert closed >= 1
        cut = m[("onecard_partial_frame_connections_closed_total", (("reason", "budget"),))]
        assert cut >= 20 - (1 << 20) // (180 << 10)
        for s in held:
            s.close()
    finally:
        sw.stop()


def test_a_native_connection_gets_a_small_first_frame_until_it_authenticates(switch_dir,
                                                                             world):
    sw = start_switch(switch_dir)
    try:
        stranger = socket.create_connection(("127.0.0.1", sw.native), timeout=10)
        stranger.sendall((1 << 20).to_bytes(4, "big") + b"\x94" * 1000)   # 1 MiB announced
        assert closed_by_peer(stranger)
        stranger.close()
        m = metrics(sw)
        assert m[("onecard_partial_frame_connections_closed_total",
                  (("reason", "first_frame"),))] == 1
        sock, exchange = socket_exchange("127.0.0.1", sw.native, 4)
        t = NativeTerminal(world.terminal(TERM_BUS_READER, 31, 0), exchange)
        assert t.signon().rc == "00"
        sock.sendall((1 << 20).to_bytes(4, "big") + b"\x94" * 1000)       # now allowed
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.close()
    finally:
        sw.stop()


def test_readyz_is_ready_when_the_journal_is_writable(running_switch):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{running_switch.http}/readyz",
                                    timeout=10) as r:
            assert r.status == 200
    except urllib.error.HTTPError as e:
        pytest.fail(f"/readyz {e.code}")
