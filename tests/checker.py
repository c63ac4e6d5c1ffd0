"""A Jepsen-style checker for faults under load: terminals log every approval they were told
of; after the fault, the committed journal must hold each exactly once, balances must be the
opening ones minus exactly the journaled debits, and a retransmission must get the original
answer without a second debit. Shared by the SQLite and PostgreSQL recovery tests and the
cluster failover tests."""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onecard.core.state import KIND_PURCHASE
from onecard.switch.store import sqlite
from onecard.switch.store.pg import journal as pg_journal

from conftest import STORE_FILE
from termsim import iso_decode
from test_server import iso_terminal, read_frames

WINDOW = 4
MAX_ROUNDS = 20_000               # per terminal: every load loop is bounded


@dataclass(frozen=True)
class Approval:
    tid: str
    stan: int
    pan: str
    amount_fen: int
    rrn: str
    raw: bytes                    # the request as sent, for a retransmission
    sent_at: float                # monotonic
    answered_at: float
    request_no: int               # how many requests its terminal had sent before it


@dataclass
class Load:
    """Terminals sending ISO 8583 purchases in windows until stopped (or the switch goes)."""

    sw: object
    world: object
    cards: list[str]
    terminals: int = 6
    reply_timeout_s: float = 10.0
    deadline_s: float = 300.0
    approved: list[Approval] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)      # tid: requests sent
    declined: int = 0
    errors: int = 0

    def __post_init__(self) -> None:
        # What this load adds to the journal is checked, not what earlier tests on the same
        # store did with the same terminals and STANs.
        _, numbers, _ = committed_journal(self.sw.data_dir)
        self.since_no = int(numbers[-1]) + 1 if len(numbers) else 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True)
                        for k in range(self.terminals)]
        for th in self.threads:
            th.start()

    def _run(self, k: int) -> None:
        rng = random.Random(k)
        deadline = time.monotonic() + self.deadline_s
        try:
            sock, t = iso_terminal(self.sw, self.world, 31, k + 1)
            sock.settimeout(self.reply_timeout_s)
            for _ in range(MAX_ROUNDS):
                if self.stop.is_set() or time.monotonic() > deadline:
                    break
                sent = [(pan, amount, t.purchase(pan, amount)) for pan, amount in
                        ((rng.choice(self.cards), rng.randint(1, 500)) for _ in range(WINDOW))]
                sent_at = time.monotonic()
                sock.sendall(b"".join(r for _, _, r in sent))
                frames = read_frames(sock, WINDOW)
                now = time.monotonic()
                for (pan, amount, raw), frame in zip(sent, frames, strict=True):
                    reply = iso_decode(frame)
                    with self.lock:
                        request_no = self.requests.get(t.info.tid, 0)
                        self.requests[t.info.tid] = request_no + 1
                        if reply["39"] != "00":
                            self.declined += 1
                            continue
                        self.approved.append(Approval(t.info.tid, int(reply["11"]), pan, amount,
                                                      reply["37"], raw, sent_at, now,
                                                      request_no))
        except OSError:
            with self.lock:
                self.errors += 1                      # the switch went away under us

    def count(self) -> int:
        with self.lock:
            return len(self.approved)

    def wait_for(self, approvals: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.count() < approvals and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.count() >= approvals

    def first_answer_sent_after(self, moment: float) -> float | None:
        """When the first approval of a request sent after moment arrived (its commit began
        after moment)."""
        with self.lock:
            times = [a.answered_at for a in self.approved if a.sent_at > moment]
        return min(times) if times else None

    def finish(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(self.reply_timeout_s + 30)


def balance(probe, pan: str) -> int:
    return int(probe.send(probe.balance(pan))[0]["54"][8:])


def opening_balances(sw, world, cards: list[str]) -> dict[str, int]:
    sock, probe = iso_terminal(sw, world, 31, 0)
    try:
        return {pan: balance(probe, pan) for pan in cards}
    finally:
        sock.close()


def committed_journal(data_dir: Path) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """The committed journal (records, their numbers) and terminal tids by index, from the
    store the data set's switch is configured with."""
    cfg = data_dir.parent / f"{data_dir.name}{STORE_FILE}"
    if not cfg.exists():
        conn = sqlite.connect(sqlite.db_path(data_dir), readonly=True)
        try:
            recs, nos = sqlite.journal_records(conn)
            return recs, nos, dict(conn.execute("SELECT idx, tid FROM terminals"))
        finally:
            conn.close()
    import tomllib

    import psycopg

    dsn = tomllib.loads(cfg.read_text())["store"]["dsn"]
    with psycopg.connect(dsn) as conn:
        recs, nos = sqlite.records_of(pg_journal.journal_rows(conn))
        tids = dict(conn.execute("SELECT idx, tid FROM terminals").fetchall())
    return recs, nos, tids


def check_exactly_once(sw, world, load: Load, opening: dict[str, int]) -> int:
    """Every approval once in the journal with its amount and RRN, balances exact to the fen,
    a retransmission answered as before without a second debit. The debits journaled."""
    recs, nos, tids = committed_journal(sw.data_dir)
    assert np.all(np.diff(nos) == 1), "gaps in the record numbers"
    recs, nos = recs[nos >= load.since_no], nos[nos >= load.since_no]
    debit = (recs["kind"] == KIND_PURCHASE) & (recs["rc"] == 0)
    debits, debit_nos = recs[debit], nos[debit]
    journaled = {(tids[int(r["terminal"])], int(r["seq"])): (int(r["amount_fen"]), int(no))
                 for r, no in zip(debits, debit_nos, strict=True)}
    assert len(journaled) == len(debits), "a terminal and STAN debited twice"
    for a in load.approved:
        assert journaled[(a.tid, a.stan)] == (a.amount_fen, int(a.rrn)), a
    by_card: dict[str, int] = {}
    for r in debits:
        pan = str(int(world.state.cards["pan"][r["card"]]))
        by_card[pan] = by_card.get(pan, 0) + int(r["amount_fen"])
    sock, probe = iso_terminal(sw, world, 31, 0)
    probe.stan = 500_000
    try:
        for pan, fen in opening.items():
            assert balance(probe, pan) == fen - by_card.get(pan, 0), pan
        assert sum(a.amount_fen for a in load.approved) <= sum(by_card.values())
        # The newest approval (in its terminal's ring) and the oldest (hundreds of requests
        # ago, found in the idempotency horizon, rebuilt by the restart): each retransmitted
        # gets its original answer and no second debit.
        assert load.approved, "no approval"
        for old in {min(load.approved, key=lambda a: a.answered_at),
                    max(load.approved, key=lambda a: a.answered_at)}:
            before = balance(probe, old.pan)
            with socket.create_connection(("127.0.0.1", sw.iso), timeout=10) as s:
                s.sendall(old.raw)
                (retry,) = [iso_decode(f) for f in read_frames(s, 1)]
            assert (retry["39"], retry["37"], int(retry["11"])) == ("00", old.rrn, old.stan), \
                (retry, old)
            assert balance(probe, old.pan) == before
    finally:
        sock.close()
    return len(debits)
