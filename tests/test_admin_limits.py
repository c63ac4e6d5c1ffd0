"""Admin requests that could hurt the terminals (issue 13): bodies over the limit are refused
before they are read, large bodies are parsed while terminals keep being answered, and wrong
tokens are limited per peer address and logged without the token, at a bounded rate."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from onecard.protocols import native
from onecard.switch.admin.guard import FailureLimiter

from conftest import TOKENS, AdminClient, Supply, assert_problem, native_session, start_switch

pytestmark = pytest.mark.slow

MiB = 1 << 20


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def token(sw, role: str) -> str:
    return TOKENS[str(sw.data_dir)][role]


def raw_request(port: int, head: str, body_chunks=(), timeout_s: float = 20.0) -> str:
    """Send a request's head and then body chunks (until the switch stops reading), and
    return the status line and headers of its answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    try:
        sock.sendall(head.encode())
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                break                                  # refused and closed: stop sending
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer.decode("latin-1")
    finally:
        sock.close()


def test_a_body_over_the_limit_is_refused_by_its_length_before_it_is_sent(sw):
    head = (f"POST /admin/disbursements HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token(sw, 'finance')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {100 * MiB}\r\n\r\n")
    answer = raw_request(sw.http, head)            # no body at all: the length says enough
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "application/problem+json" in answer


def test_a_streamed_body_over_the_limit_is_refused_and_not_held_in_memory(sw):
    head = (f"POST /admin/disbursements HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token(sw, 'finance')}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"[" * MiB
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    before = rss_bytes(sw.proc.pid)
    answer = raw_request(sw.http, head, (chunk for _ in range(64)))     # 64 MiB offered
    grown = rss_bytes(sw.proc.pid) - before
    assert answer.startswith("HTTP/1.1 413"), answer
    assert grown < 24 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
    assert AdminClient(sw).get("/healthz", role=None).status == 200


def test_the_body_is_not_read_before_the_token_is_checked(sw):
    head = (f"POST /admin/disbursements HTTP/1.1\r\nHost: x\r\n"
            "Authorization: Bearer wrong-token-wrong-token\r\n"
            f"Content-Type: application/json\r\nContent-Length: {5 * MiB}\r\n\r\n")
    assert raw_request(sw.http, head).startswith("HTTP/1.1 401")


def test_the_largest_batch_is_parsed_while_terminals_keep_being_answered(sw, demo_dir,
                                                                          terminals):
    """100,000 items (the default maximum, ~6 MB): from the moment the whole body is sent
    until the answer comes, a native terminal's heartbeats go on being answered."""
    supply = Supply(demo_dir, terminals)
    sock, gate = native_session(sw, supply.terminal("TRN-BUS", 31))
    items = [{"card": f"62131100{i:011d}", "amount_fen": 1} for i in range(100_000)]
    body = json.dumps({"programme": "PENSION", "period": "2026-07", "items": items}).encode()
    head = (f"POST /admin/disbursements HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token(sw, 'finance')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    state = {"sent": False, "answered": False, "during": 0}
    stop = threading.Event()

    def heartbeats():
        while not stop.is_set():
            (hb,) = gate.send([native.Heartbeat(gate.next_seq())])
            assert hb.rc == "00"
            if state["sent"] and not state["answered"]:
                state["during"] += 1

    pinger = threading.Thread(target=heartbeats)
    pinger.start()
    try:
        http = socket.create_connection(("127.0.0.1", sw.http), timeout=120)
        http.sendall(head.encode() + body)
        state["sent"] = True
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += http.recv(65536)
        state["answered"] = True
        http.close()
    finally:
        stop.set()
        pinger.join(30)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert state["during"] >= 10, state
    sock.close()


def test_wrong_tokens_are_limited_per_peer_then_429_but_the_right_token_passes(switch_dir,
                                                                                tmp_path):
    config = tmp_path / "onecard.toml"
    config.write_text("[admin]\ntoken_failures_per_minute = 3\n")
    sw = start_switch(switch_dir, "--config", str(config))
    try:
        api = AdminClient(sw)
        guesses = [f"Bearer guess-{i:04d}-aaaaaaaaaaaaaaaa" for i in range(8)]
        for guess in guesses[:3]:
            assert_problem(api.get("/admin/audit", role=None, auth=guess), 401)
        for guess in guesses[3:]:
            r = api.get("/admin/audit", role=None, auth=guess)
            assert_problem(r, 429)
            assert 1 <= int(r.headers["Retry-After"]) <= 20, r.headers
        # The right token from the same address is not locked out by the guesses.
        assert api.get("/admin/audit").status == 200
        assert_problem(api.get("/admin/audit", role=None, auth=guesses[0]), 429)
        assert api.get("/catalogue", role=None).status == 200          # public: not limited
        assert api.get("/healthz", role=None).status == 200
        metrics = api.get("/metrics", role=None).text
        assert "onecard_admin_wrong_tokens_total 3.0" in metrics
        assert "onecard_admin_rate_limited_total 6.0" in metrics       # 5 guesses, 1 again
    finally:
        sw.stop()
    log = sw.text()
    lines = [line for line in log.splitlines() if "wrong token" in line]
    assert len(lines) == 1 and "127.0.0.1" in lines[0], lines      # one line a minute a peer
    assert not any(g.split()[1] in log for g in guesses)            # never the token


def test_the_limiter_refills_and_forgets():
    now = [1000.0]
    limiter = FailureLimiter(6, clock=lambda: now[0])
    for _ in range(6):
        assert limiter.retry_after_s("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
    assert limiter.retry_after_s("10.0.0.1") == 10            # one failure back per 10 s
    assert limiter.retry_after_s("10.0.0.2") == 0             # per peer
    now[0] += 10
    assert limiter.retry_after_s("10.0.0.1") == 0
    limiter.failed("10.0.0.1")
    assert limiter.retry_after_s("10.0.0.1") > 0
    now[0] += 60
    assert limiter.retry_after_s("10.0.0.1") == 0
    for i in range(5000):                                      # memory stays bounded
        limiter.failed(f"10.1.{i // 256}.{i % 256}")
    assert len(limiter.peers) <= 4096
