"""kill -9 under load: every approval a terminal received is in the journal, balances after
restart are the opening balances minus exactly the journaled debits, and a retried request
gets its original answer."""

import random
import socket
import threading
import time

import numpy as np
import pytest

from onecard.core.state import KIND_PURCHASE
from onecard.switch import store

from conftest import start_switch
from termsim import iso_decode
from test_server import iso_terminal, read_frames

pytestmark = pytest.mark.slow

WORKERS = 6
WINDOW = 4
MAX_ROUNDS = 5000                 # per worker; the kill comes long before
KILL_AFTER_APPROVALS = 400
MAX_WAIT_S = 30


def test_kill9_under_load_recovers_exactly_the_committed_state(switch_dir, world):
    sw = start_switch(switch_dir)
    cards = [world.card(nth=i)[0] for i in range(24)]
    sock, probe = iso_terminal(sw, world, 31, 0)
    opening = {pan: int(probe.send(probe.balance(pan))[0]["54"][8:]) for pan in cards}
    sock.close()

    approved: list[tuple[str, int, str, int, str, bytes]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(k: int) -> None:
        rng = random.Random(k)
        try:
            sock, t = iso_terminal(sw, world, 31, k + 1)
            for _ in range(MAX_ROUNDS):
                if stop.is_set():
                    break
                sent = []
                for _ in range(WINDOW):
                    pan, amount = rng.choice(cards), rng.randint(1, 500)
                    sent.append((pan, amount, t.purchase(pan, amount)))
                sock.sendall(b"".join(r for _, _, r in sent))
                for (pan, amount, raw), frame in zip(sent, read_frames(sock, WINDOW),
                                                     strict=True):
                    reply = iso_decode(frame)
                    if reply["39"] == "00":
                        with lock:
                            approved.append((t.info.tid, int(reply["11"]), pan, amount,
                                             reply["37"], raw))
        except OSError:
            pass                                      # the switch was killed under us

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(WORKERS)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + MAX_WAIT_S
    while len(approved) < KILL_AFTER_APPROVALS and time.monotonic() < deadline:
        time.sleep(0.01)
    sw.kill9()
    stop.set()
    for th in threads:
        th.join(30)
    assert len(approved) >= KILL_AFTER_APPROVALS, "load did not get going"

    sw = start_switch(switch_dir)
    try:
        conn = store.connect(store.db_path(switch_dir), readonly=True)
        recs, nos = store.journal_records(conn)
        tids = dict(conn.execute("SELECT idx, tid FROM terminals"))
        conn.close()
        debits = recs[(recs["kind"] == KIND_PURCHASE) & (recs["rc"] == 0)]
        debit_nos = nos[(recs["kind"] == KIND_PURCHASE) & (recs["rc"] == 0)]
        journal = {(tids[int(r["terminal"])], int(r["seq"])): (int(r["amount_fen"]), int(no))
                   for r, no in zip(debits, debit_nos, strict=True)}
        assert len(journal) == len(debits)            # one debit per terminal and STAN
        # 1. every approval a terminal saw is durable, with its amount and RRN
        for tid, stan, _pan, amount, rrn, _ in approved:
            assert journal[(tid, stan)] == (amount, int(rrn))
        # 2. balances = opening - journaled debits, card by card
        by_card = {}
        for r in debits:
            pan = str(int(world.state.cards["pan"][r["card"]]))
            by_card[pan] = by_card.get(pan, 0) + int(r["amount_fen"])
        sock, probe = iso_terminal(sw, world, 31, 0)
        probe.stan = 500_000
        for pan in cards:
            now = int(probe.send(probe.balance(pan))[0]["54"][8:])
            assert now == opening[pan] - by_card.get(pan, 0), pan
        seen = sum(amount for *_, amount, _rrn, _raw in approved)
        assert seen <= sum(by_card.values())
        # 3. a retry after the crash gets the original answer, without a second debit;
        # the terminal's session (working MAC key) survived the crash too.
        tid, stan, pan, amount, rrn, raw = max(approved, key=lambda a: (a[0], a[1]))
        before = int(probe.send(probe.balance(pan))[0]["54"][8:])
        with socket.create_connection(("127.0.0.1", sw.iso), timeout=10) as s:
            s.sendall(raw)
            (retry,) = [iso_decode(f) for f in read_frames(s, 1)]
        assert retry["39"] == "00" and retry["37"] == rrn and int(retry["11"]) == stan
        after = int(probe.send(probe.balance(pan))[0]["54"][8:])
        assert after == before
        sock.close()
        assert np.all(np.diff(nos) == 1)              # no gaps in the record numbers
    finally:
        sw.stop()
