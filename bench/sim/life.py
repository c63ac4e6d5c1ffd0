"""The simulator's step, continued: terminals acting and being answered, crashes, restarts,
checkpoints, and the checks made after each."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, NoReturn

from onecard.protocols import native
from onecard.switch.store import loader, sqlite

from . import checks
from .node import Held, Node
from .terminals import IsoSim, Request, iso_answer, native_answer

if TYPE_CHECKING:
    import random
    from _hashlib import HASH
    from pathlib import Path

    from onecard.core.state import State

    from .checks import Books
    from .operator import Operator
    from .traffic import Link, Traffic
    from .world import Hooks, Summary

# Requests whose approval must name a durable record (those that change the state).
JOURNALED = frozenset({"purchase", "void", "void reversal", "settlement", "balance", "tap",
                       "offline tap", "verify", "venue", "medical", "medical refund", "topup",
                       "signon"})
ACKNOWLEDGED_ONLY = frozenset({"reversal", "void reversal"})
OPERATOR_TID = "operator"
RETRANSMIT_SHARE = 0.12
OPERATOR_SHARE = 0.04
SIGNON_AGAIN_SHARE = 0.01
SPLIT_SHARE = 0.08


class Lifecycle:
    # What the steps here use of the Simulator (world.py) that sets it up, for the type checker.
    rng: random.Random
    now_us: int
    incarnation: int
    map_entries_max: int
    work_dir: Path
    hooks: Hooks
    summary: Summary
    digest: HASH
    links: list[Link]
    link_by_tid: dict[str, Link]
    traffic: Traffic
    operator: Operator
    opening: State
    shadow_durable: State
    books_durable: Books
    durable_rows: list[tuple[int, bytes]]

    if TYPE_CHECKING:
        def fail(self, invariant: str, detail: str) -> NoReturn: ...

        def _fresh_state(self) -> State: ...

    # ---- terminals and the operator act ----------------------------------------------------

    def _act(self) -> None:
        rng = self.rng
        for link in self.links:
            if link.split_rest:              # the rest of a split buffer arrives first
                rest, link.split_rest = link.split_rest, b""
                self._send(link, rest)
        unsigned = [t for t in self.links if not t.signed_on and not t.outstanding]
        stale = [t for t in self.links if t.outstanding and t.stale]
        u = rng.random()
        if unsigned:
            self._transmit(*self.traffic.signon(rng.choice(unsigned)))
        elif stale:
            link = rng.choice(stale)        # reconnected: send again what was not answered
            link.stale = False
            self._send(link, b"".join(dict.fromkeys(r.frame for r in link.outstanding)))
        elif u < RETRANSMIT_SHARE:
            self._retransmit()
        elif u < RETRANSMIT_SHARE + OPERATOR_SHARE:
            self._operate()
        elif u < RETRANSMIT_SHARE + OPERATOR_SHARE + SIGNON_AGAIN_SHARE:
            idle = [t for t in self.links if not t.outstanding]
            if idle:
                self._transmit(*self.traffic.signon(rng.choice(idle)))
        else:
            drawn = self.traffic.next(self.now_us // 1_000_000)
            if drawn is not None:
                self._transmit(*drawn)

    def _transmit(self, link, data: bytes, requests: list[Request]) -> None:
        for r in requests:
            r.mak = link.sim.mak
        link.outstanding.extend(requests)
        if len(data) > 8 and self.rng.random() < SPLIT_SHARE:
            cut = self.rng.randrange(1, len(data))
            link.split_rest = data[cut:]
            data = data[:cut]
        self._send(link, data)

    def _send(self, link, data: bytes) -> None:
        _first, _end, close = self.node.receive(link.tid, link.proto, data, self.now_us)
        if close:
            link.stale = True                # the switch hung up: the terminal reconnects

    def _retransmit(self) -> None:
        """A terminal sends an answered request again (a lost reply, as it believes)."""
        ready = [t for t in self.links if not t.outstanding and t.recent]
        if not ready:
            return
        link = self.rng.choice(ready)
        first = self.rng.choice(link.recent)
        if first.mak != link.sim.mak:
            return                           # MACed under a key since replaced
        iso = isinstance(link.sim, IsoSim)
        if iso:
            seqs = [first.seq]
        else:                                # a native frame may hold a batch: all of it
            body = native.decode_frame(first.frame[4:]).body
            seqs = [m.seq for m in native.decode_requests(body)]
        known = {r.seq: r for r in link.recent if r.frame == first.frame}
        for seq in seqs:
            before = known.get(seq) or Request(first.tid, seq, first.kind, first.frame)
            again = Request(first.tid, seq, before.kind, first.frame, retry_of=before)
            again.mak = first.mak
            link.outstanding.append(again)
        self._send(link, first.frame)

    def _operate(self) -> None:
        self.node.engine.clock_us = self.now_us
        done = self.operator.act(self.node.engine)
        if done is not None:
            what, no = done
            self.node.held.append(Held(no + 1, OPERATOR_TID, -1, what.encode()))
        self.node.submit()

    # ---- replies ---------------------------------------------------------------------------

    def _release(self) -> None:
        for held in self.node.releasable(early=self.hooks.release_early):
            self.digest.update(held.tid.encode() + held.data)
            if held.tid == OPERATOR_TID:
                self.summary.checks["operator change durable"] += 1
                if held.need_no > self.books_durable.end_no:
                    self.fail("approved reply durable", f"operator's {held.data.decode()} "
                              f"(record {held.need_no - 1}) acknowledged before it was durable")
                continue
            self._deliver(held)

    def _deliver(self, held: Held) -> None:
        link = self.link_by_tid[held.tid]
        iso = isinstance(link.sim, IsoSim)
        reply: Any                      # an ISO 8583 document (a dict) if iso, else a struct
        for reply in link.sim.parse(held.data):
            self.summary.replies += 1
            seq = int(reply["11"]) if iso else reply.seq
            rc = reply["39"] if iso else reply.rc
            if not iso and seq == 0 and isinstance(reply, native.ErrorReply) and link.outstanding:
                # A frame-level refusal (MAC, framing) answers every message of the frame.
                frame = link.outstanding[0].frame
                link.outstanding = [r for r in link.outstanding if r.frame != frame]
                continue
            req = next((r for r in link.outstanding if r.seq == seq), None)
            if req is None:
                self.fail("terminal view", f"{link.tid}: a reply it did not ask for: {reply!r}")
            link.outstanding.remove(req)
            if req.kind == "signon" and rc == "00":
                link.sim.learn_keys(reply)
                link.signed_on = True
            if req.kind == "signon" and not iso and not isinstance(reply, native.SignOnReply):
                self.fail("terminal view", f"{link.tid}: sign-on answered with {reply!r}")
            self.summary.answers[(req.kind, rc)] += 1
            answer = iso_answer(reply) if iso else native_answer(reply)
            self._same_answer(link, req, answer)
            if rc == "00" and req.kind in JOURNALED:
                self._approval_durable(link, seq, req, reply if iso else None)
            link.recent = [*link.recent[-7:], req.retry_of or req]

    def _same_answer(self, link, req: Request, answer: tuple) -> None:
        first = req.retry_of
        if first is None and req.decided is not None:
            first = Request(req.tid, req.seq, req.kind, req.frame, answer=req.decided)
            self.summary.checks["answer decided before a crash given after it"] += 1
        if first is None:
            req.answer = answer
            return
        self.summary.checks["retransmission answered as before"] += 1
        if first.answer is not None and first.kind in ACKNOWLEDGED_ONLY:
            # A repeated reversal is acknowledged from the original's ring slot: the code and
            # the amount again, but not the reversal's own RRN (its record is not kept there).
            first_answer, answer = (first.answer[0], first.answer[3]), (answer[0], answer[3])
            if first_answer[0] == "00" and answer != first_answer:
                self.fail("one effect per request", f"{link.tid} {first.kind} {first.seq}: "
                          f"first answered {first.answer}, retransmission {answer}")
            return
        if first.answer is not None and first.answer[0] == "00" and answer != first.answer \
                and answer[0] != "94" and first.kind != "signon":
            self.fail("one effect per request", f"{link.tid} {first.kind} {first.seq}: first "
                      f"answered {first.answer}, retransmission {answer}")

    def _approval_durable(self, link, seq: int, req: Request, iso_reply: dict | None) -> None:
        self.summary.checks["approved reply durable"] += 1
        rc = self.books_durable.by_request.get((link.idx, seq))
        if rc != checks.APPROVED:
            self.fail("approved reply durable", f"{link.tid} {req.kind} {seq} approved, but "
                      f"the committed journal has {rc!r} for it")
        if iso_reply is not None and "37" in iso_reply:
            if int(iso_reply["37"]) >= self.books_durable.end_no:
                self.fail("approved reply durable", f"{link.tid} {req.kind} {seq}: RRN "
                          f"{iso_reply['37']} beyond the durable journal "
                          f"({self.books_durable.end_no})")

    # ---- crashes, restarts, checkpoints -----------------------------------------------------

    def _crash(self, *, wal_bytes: int | None = None) -> None:
        self._remember_decided(wal_bytes is None)
        self.incarnation += 1
        image = self.work_dir / f"node-{self.incarnation}"
        self.node.crash(image, wal_bytes=wal_bytes)
        self._restarted(image)

    def _remember_decided(self, durable_kept: bool) -> None:
        """Replies that were never sent but whose records are durable: after recovery, the
        terminal's retransmission must get exactly these answers (crash after commit)."""
        if not durable_kept:
            return
        for held in self.node.held:
            if held.tid == OPERATOR_TID or held.need_no > self.books_durable.end_no:
                continue
            link = self.link_by_tid[held.tid]
            iso = isinstance(link.sim, IsoSim)
            reply: Any                  # as in _deliver
            for reply in link.sim.parse(held.data):
                seq = int(reply["11"]) if iso else reply.seq
                req = next((r for r in link.outstanding if r.seq == seq), None)
                if req is not None and req.retry_of is None and req.kind != "signon":
                    req.decided = iso_answer(reply) if iso else native_answer(reply)

    def _graceful_restart(self) -> None:
        if self.disk_full_steps or self.node.queue or self.node.held:
            return                           # a stop waits for its commits: try later
        self.node.stop()
        self._restarted(self.node.data_dir, crashed=False)

    def _restarted(self, data_dir, *, crashed: bool = True) -> None:
        """A new incarnation recovers from the disk; what it recovered is checked."""
        self.summary.restarts += 1
        self.disk_full_steps = self.slow_steps = 0
        self.node = Node(data_dir, map_entries_max=self.map_entries_max, now_us=self.now_us)
        got = b"".join(blob for _, blob in sqlite.journal_rows(self.node.conn))
        want = b"".join(blob for _, blob in self.durable_rows)
        self.summary.checks["recovered journal = durable prefix"] += 1
        if got != want:
            self.fail("recovered journal = durable prefix", f"recovered {len(got) // 80} "
                      f"records, {len(want) // 80} were durable"
                      + ("" if len(got) != len(want) else " (contents differ)"))
        self._compare(self.node.state, self.shadow_durable, "recovery = replay from opening")
        # What was not durable is gone: the books and the shadow start again from the durable.
        self.books_all = self.books_durable.copy()
        self.shadow_all = checks.replay(self._fresh_state(), self.durable_rows)
        self.seen_no = self.books_durable.end_no
        for link in self.links:
            link.split_rest = b""
            link.stale = bool(link.outstanding)

    def _checkpoint(self) -> None:
        if self.node.checkpoint() is not None:
            self._check_checkpoint()

    def _check_checkpoint(self) -> None:
        """Recovery from the checkpoint just published (+ the durable journal after it)
        equals replay of the durable journal from the opening state."""
        loaded = loader.load(self.node.data_dir, map_entries_max=self.map_entries_max)
        self.summary.checks["checkpoint + replay = replay from opening"] += 1
        self._compare(loaded.state, self.shadow_durable,
                      "checkpoint + replay = replay from opening")

    def _compare(self, state, shadow, invariant: str) -> None:
        diffs = checks.differences(state, shadow, deep=True)
        if diffs:
            self.fail(invariant, f"differs in {', '.join(diffs)}")

    def _check_live(self) -> None:
        self.summary.checks["live = replay from opening"] += 1
        diffs = checks.differences(self.node.state, self.shadow_all)
        if diffs:
            self.fail("live = replay from opening", f"differs in {', '.join(diffs)}")
        self.summary.checks["money conserved"] += 1
        checks.check_totals(self.books_all, self.opening, self.node.state)

    def _mutate_last_row(self) -> None:
        """Corrupt the newest committed journal row on disk (a broken store), then crash:
        recovery must notice."""
        with sqlite3.connect(self.node.db_path) as conn:
            row = conn.execute("SELECT first_no, records FROM journal ORDER BY first_no DESC "
                               "LIMIT 1").fetchone()
            if row is None:
                return
            blob = bytearray(row[1])
            blob[16] ^= 0x01                  # balance_fen_after of the first record
            conn.execute("UPDATE journal SET records = ? WHERE first_no = ?",
                         (bytes(blob), row[0]))
        self._crash()


__all__ = ["Lifecycle"]
