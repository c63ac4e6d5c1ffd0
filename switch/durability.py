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
from collections.abc import Callable

from onecard.core.engine import Engine
from onecard.core.intake import Replies
from onecard.switch.store.backend import JournalWriter


class Durability(Replies):
    """The reply batches waiting for the journal (compiled: core/intake.pyx's ``Replies``
    holds, releases and writes them), and the futures of operators waiting."""

    def __init__(self, engine: Engine, committer: JournalWriter, durable_no: int,
                 waiting_batches_max: int, on_durable: Callable[[int], None]) -> None:
        super().__init__(engine, committer, durable_no, waiting_batches_max, on_durable)
        self.failed: BaseException | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Before any connection or operator can reach deliver or committed."""
        self.loop = loop

    # ---- operators and other regions ---------------------------------------------------------

    async def committed(self, record_no: int) -> None:
        """Wait until the journal record ``record_no`` (and all before it) is durable.
        Operators' changes answer only then, like terminals' approvals."""
        self.submit()
        if record_no < self.durable_no:
            return
        if self.failed is not None:
            raise RuntimeError(f"journal failed: {self.failed}")
        future = self.loop.create_future()
        self.record_waiters.append((record_no, future))
        await future

    def fail(self, exc: BaseException) -> None:
        """The journal failed: answers that are not durable must never leave."""
        self.failed = exc
        self.waiting.clear()
        for _, future in self.record_waiters:
            if not future.done():
                future.set_exception(RuntimeError(f"journal failed: {exc}"))
        self.record_waiters.clear()


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
