"""Replies released once the journal records they depend on are durable, and operators'
waits for theirs.

Replies keep request order on each connection: every batch waits for all journal records
appended before it was answered, and records become durable in order, so batches are
released in the order they were processed. This is the narrow interface the rest of the
runtime is given for durability (the submitted and durable numbers, ``deliver``, ``submit``
and ``committed``), rather than the switch: the intake delivers replies here, the region
link and the admin API wait here, admission reads the head of ``waiting``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from onecard.core.engine import Engine
from onecard.switch.store.backend import JournalWriter


class Held(Protocol):
    """What durability needs of a connection (intake.Connection): where to write, and the
    flags it keeps for backpressure."""

    transport: asyncio.Transport | None
    waiting_need: int
    paused: bool
    forwarding: bool
    last_rx: float


class Durability:
    """The reply batches waiting for the journal, and the futures of operators waiting."""

    def __init__(self, engine: Engine, committer: JournalWriter, durable_no: int,
                 waiting_batches_max: int, on_durable: Callable[[int], None]) -> None:
        assert waiting_batches_max > 0
        self.engine = engine
        self.committer = committer
        self.durable_no = durable_no
        self.waiting_batches_max = waiting_batches_max
        self.waiting: deque = deque()
        self.paused: set[Held] = set()
        self.failed: BaseException | None = None
        self.submit_soon = False
        self.iteration_start = 0.0            # this loop iteration's first read (intake)
        self._on_durable = on_durable         # the switch's checkpoint waiting for end_no
        self._record_waiters: list[tuple[int, asyncio.Future]] = []
        # Set by start(), before any connection or operator can reach deliver or committed.
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # ---- replies -----------------------------------------------------------------------------

    def deliver(self, conn: Held, replies: bytes, batch: int, close: bool) -> None:
        # The records go to the writer once per loop iteration, after every socket that was
        # ready has been read (call_soon runs after the iteration's I/O callbacks): handed
        # over per read, a waiting writer would start a commit for the first terminal's
        # record alone and the rest would wait a whole fsync for the next one.
        need = self.engine.journal.next_no
        if batch < 0:
            # A refusal made no record: it waits only for this connection's earlier replies
            # (never for a commit the disk cannot take now), and keeps their order.
            batch = 0
            if conn.waiting_need <= self.durable_no:
                self._write(conn, replies, batch, close)
                return
            need = conn.waiting_need
        if not self.submit_soon and need > self.committer.submitted_no:
            self.submit_soon = True
            self.iteration_start = conn.last_rx   # this loop iteration's first read
            self._loop.call_soon(self._submit_batches)
        if self.committer.durable_no > self.durable_no:
            # A commit finished while this loop iteration was busy with sockets: release its
            # replies now rather than when the event loop reaches the eventfd.
            self.released(self.committer.durable_no)
        if need <= self.durable_no:
            self._write(conn, replies, batch, close)
            return
        self.waiting.append((need, conn, replies, batch, close))
        conn.waiting_need = need
        if len(self.waiting) > self.waiting_batches_max and not conn.paused:
            conn.paused = True
            self.paused.add(conn)
            assert conn.transport is not None, "a reply queued for a connection gone"
            conn.transport.pause_reading()

    def _submit_batches(self) -> None:
        self.submit_soon = False
        self.submit()

    def _write(self, conn: Held, replies: bytes, batch: int, close: bool) -> None:
        transport = conn.transport
        if transport is None:
            return                           # the terminal went away; its state is journaled
        transport.write(replies)
        self.engine.metrics.written(batch)
        if close:
            transport.close()

    def released(self, end_no: int) -> None:
        """Records below ``end_no`` are durable: release what waited for them."""
        self.durable_no = end_no
        if self._record_waiters:
            still = []
            for no, future in self._record_waiters:
                if no < end_no:
                    if not future.done():
                        future.set_result(None)
                else:
                    still.append((no, future))
            self._record_waiters = still
        waiting = self.waiting
        if not waiting or waiting[0][0] > end_no:
            pass
        elif len(waiting) == 1 or waiting[1][0] > end_no:
            _, conn, replies, batch, close = waiting.popleft()
            self._write(conn, replies, batch, close)
        else:
            self._write_many(end_no)
        if self.paused and len(waiting) < self.waiting_batches_max // 2:
            for conn in list(self.paused):
                conn.paused = False
                conn.last_rx = time.monotonic()    # the pause is not the terminal's silence
                if conn.transport is not None and not conn.forwarding:
                    conn.transport.resume_reading()
            self.paused.clear()
        self._on_durable(end_no)

    def _write_many(self, end_no: int) -> None:
        # Several batches released at once: one write per connection (fewer syscalls),
        # still in each connection's request order.
        waiting = self.waiting
        released: dict[Held, list] = {}
        while waiting and waiting[0][0] <= end_no:
            _, conn, replies, batch, close = waiting.popleft()
            released.setdefault(conn, []).append((replies, batch, close))
        for conn, items in released.items():
            if len(items) == 1:
                self._write(conn, *items[0])
                continue
            transport = conn.transport
            if transport is None:
                continue
            transport.write(b"".join(r for r, _, _ in items))
            for _, batch, _ in items:
                self.engine.metrics.written(batch)
            if any(c for _, _, c in items):
                transport.close()

    # ---- operators and other regions ---------------------------------------------------------

    async def committed(self, record_no: int) -> None:
        """Wait until the journal record ``record_no`` (and all before it) is durable.
        Operators' changes answer only then, like terminals' approvals."""
        self.submit()
        if record_no < self.durable_no:
            return
        if self.failed is not None:
            raise RuntimeError(f"journal failed: {self.failed}")
        future = self._loop.create_future()
        self._record_waiters.append((record_no, future))
        await future

    def submit(self) -> None:
        """Hand records appended outside a terminal batch (operators' changes) to the writer."""
        if self.engine.journal.pending:
            self.committer.submit(self.engine.journal)

    def fail(self, exc: BaseException) -> None:
        """The journal failed: answers that are not durable must never leave."""
        self.failed = exc
        self.waiting.clear()
        for _, future in self._record_waiters:
            if not future.done():
                future.set_exception(RuntimeError(f"journal failed: {exc}"))
        self._record_waiters.clear()


class OperatorDoor:
    """The one way an operator's change (admin API, clearing adjustments, another region's
    card block) enters the state: the core's clock is brought to now (``Engine.tick``, as a
    terminal batch would), then the operation (core/operations.pyx) runs on the authoriser
    and appends its records. The caller waits for them with ``Durability.committed``."""

    def __init__(self, engine: Engine, durability: Durability) -> None:
        self.engine = engine
        self.durability = durability

    def apply(self, operation: Callable, *args: object, **kwargs: object):
        self.engine.tick()
        return operation(self.engine.authoriser, *args, **kwargs)
