"""The composition root of one switch process: the core, the store's writers, durability,
admission, the intake (terminal connections), the region link and clearing are built here and
given what each needs; the listeners, the checkpoint and idle loops, start and stop.

Nothing below imports this module (docs/architecture.md): each part is given a narrow object
(``Durability``, ``OperatorDoor``, ``Store``, ``RegionContext``), never the switch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onecard.core.engine import Engine
from onecard.protocols import clearing
from onecard.switch import catalogue, logs, tls
from onecard.switch.admission import Admission
from onecard.switch.clearing.service import ClearingService
from onecard.switch.config import Config
from onecard.switch.durability import Durability, OperatorDoor
from onecard.switch.errors import ListenError
from onecard.switch.intake import PROTOCOL_NAMES, Intake
from onecard.switch.region.context import RegionContext
from onecard.switch.region.link import RegionLink
from onecard.switch.security import holders_file
from onecard.switch.store import backend
from onecard.switch.store.loader import Loaded

if TYPE_CHECKING:
    import numpy as np

    from onecard.switch.store.pg.lease import Lease

log = logging.getLogger("onecard.server")
IDLE_SWEEP_S = 1.0              # how often connections are checked for the idle timeouts
STOP_UNSENT_WAIT_S = 5.0        # at stop, for advices still queued for other regions
__all__ = ["PROTOCOL_NAMES", "Listener", "Switch"]


@dataclass
class Listener:
    name: str
    server: asyncio.base_events.Server
    host: str = ""

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]


class Switch:
    """Engine, group commit, checkpoints and listeners of one switch process."""

    def __init__(self, config: Config, loaded: Loaded, lease: Lease | None = None) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.state = loaded.state
        self.loaded = loaded
        # PostgreSQL: the lease epoch this switch writes under (None on SQLite).
        self.lease_epoch = lease.epoch if lease is not None else None
        self.keys = loaded.keys               # seals card rows and checkpoints written later
        self.engine = Engine(loaded.state, next_record_no=loaded.next_record_no,
                             daily_limit_fen=config.limits.daily_limit_fen,
                             amount_fen_max=config.limits.amount_fen_max,
                             iso_frame_bytes_max=config.server.iso8583_frame_bytes_max,
                             native_frame_bytes_max=config.server.native_frame_bytes_max,
                             native_batch_max=config.server.native_batch_max,
                             fx_rates=config.fx.rates())
        self.engine.authoriser.topup_fen_max = config.limits.topup_fen_max
        self.engine.authoriser.cutover_s = clearing.cutover_minutes(config.clearing.cutover) * 60
        self.state.horizon.cutover_s = self.engine.authoriser.cutover_s
        self.listeners: list[Listener] = []
        self.holder_watch = holders_file.FailureWatch(self.state.holders)
        self.stopped = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.store = backend.open_store(config)
        self.committer, self.checkpointer = self.store.writers(self._efd, loaded, lease)
        self.replication = self.store.replication()   # PostgreSQL: the standbys, polled
        self._writer = threading.Thread(target=self.committer.run, name="onecard-group-commit",
                                        daemon=True)
        self.last_checkpoint_no = loaded.snapshot_upto
        self._pending_checkpoint: tuple[int, dict] | None = None
        # The horizon rows of the last checkpoint taken.
        self._horizon_segment: np.ndarray | None = None
        self.started_at = time.time()
        self._tasks: list[asyncio.Task] = []
        self.durability = Durability(self.engine, self.committer, loaded.next_record_no,
                                     config.server.waiting_batches_max, self._checkpoint_durable)
        self.door = OperatorDoor(self.engine, self.durability)
        self.admission = Admission(config.server, self.durability.waiting)
        self.intake = Intake(self.engine, self.admission, self.durability,
                             config.server.write_buffer_high_bytes)
        self.link: RegionLink | None = None
        # Called after the catalogue changed (the admin API's cached public listing).
        self.catalogue_listeners: list = []
        if config.region.enabled:
            context = RegionContext(config.region.name, self.engine, self.durability,
                                    self.door, self.store, self.keys, loaded.snapshot_upto,
                                    self.lease_epoch, self.catalogue_changed)
            self.link = self.intake.link = RegionLink(context, config.region)
        self.clearing = ClearingService(config, self.committer, self.state, self.store.dsn)

    # ---- durability ----------------------------------------------------------------------------

    def _on_commit(self) -> None:
        """The writer thread signalled the eventfd: a commit finished (or failed)."""
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            return
        failure = self.committer.failure()
        if failure is not None:
            log.critical("journal commit failed, no further replies can be made durable: %s",
                         failure, extra=logs.extra("commit_failed", error=str(failure)))
            self._fail(RuntimeError(failure))
            return
        self.admission.journal_state(self.committer.full_error())
        self.durability.released(self.committer.durable_no)

    def catalogue_changed(self, db) -> None:
        """A new catalogue version is in the store: the next batch enforces it."""
        self.state.set_catalogue(*catalogue.build(db))
        for listener in self.catalogue_listeners:
            listener()

    def cards_changed(self, cards: list[int]) -> None:
        """Cards whose status an operator changed (durably): other regions must learn it
        (switch/region/blocks.py)."""
        if self.link is not None and self.link.blocks is not None:
            self.link.blocks.cards_changed(cards)

    @property
    def failed(self) -> BaseException | None:
        """The journal failure that stopped the switch, or None."""
        return self.durability.failed

    async def committed(self, record_no: int) -> None:
        """Wait until the journal record ``record_no`` (and all before it) is durable."""
        await self.durability.committed(record_no)

    def _checkpoint_durable(self, end_no: int) -> None:
        """Records below ``end_no`` are durable: a checkpoint waiting for them is written."""
        if self._pending_checkpoint is not None and self._pending_checkpoint[0] <= end_no:
            self.checkpointer.submit(*self._pending_checkpoint)
            self._pending_checkpoint = None

    def _fail(self, exc: BaseException) -> None:
        # Answers that are not durable must never leave: drop every connection and stop.
        self.durability.fail(exc)
        for transport in self.intake.transports():
            transport.abort()
        for listener in self.listeners:
            listener.server.close()
        self.stopped.set()

    def ready(self) -> tuple[bool, str]:
        """Whether to take traffic (/readyz): recovered, started, the journal writable, and
        when configured the PostgreSQL primary reachable and the region link up."""
        if self.failed is not None:
            return False, f"journal commit failed: {self.failed}"
        if self._loop is None or not self.listeners:
            return False, "starting"
        if not self.admission.journal_writable:
            return False, "journal not writable (disk full); commits are being retried"
        if getattr(self.committer, "resolving", 0):
            return False, ("a commit's outcome is being resolved on the PostgreSQL primary "
                           "(failover?); replies after it wait")
        if self.replication is not None and self.replication.unreachable():
            return False, (f"the PostgreSQL primary has not answered for "
                           f"{self.replication.failing} polls (every "
                           f"{self.replication.poll_s:g} s)")
        if self.link is not None:
            ok, why = self.link.ready()
            if not ok:
                return False, f"region link: {why}"
        return True, "ok"

    # ---- checkpoints -------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Copy the state now; publish it once the journal records it includes are durable."""
        upto = self.engine.journal.next_no
        if upto == self.last_checkpoint_no:
            return
        while self.checkpointer.confirmed:     # their horizon rows need no segment again
            self.state.horizon.confirm(self.checkpointer.confirmed.popleft())
        # The last segment's memory, once no checkpoint being written reads it.
        idle = not self.checkpointer.busy and self._pending_checkpoint is None
        arrays = self.state.snapshot(
            horizon_since_confirmed=not self.checkpointer.horizon_whole,
            horizon_reuse=self._horizon_segment if idle else None)
        self._horizon_segment = arrays.get("horizon_rows")
        if upto <= self.durability.durable_no:
            self.checkpointer.submit(upto, arrays)
        else:
            self._pending_checkpoint = (upto, arrays)
        self.last_checkpoint_no = upto

    async def _checkpoint_loop(self) -> None:
        interval = self.config.store.checkpoint_interval_s
        last = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            self.holder_watch.check()       # holder blocks that did not open: logged
            due = time.monotonic() - last >= interval
            big = (self.engine.journal.next_no - self.last_checkpoint_no
                   >= self.config.store.checkpoint_records)
            if (due or big) and not self.checkpointer.busy and self._pending_checkpoint is None:
                if self.link is not None and self.link.unsent():
                    continue                   # tried again each second until they are sent
                self.checkpoint()
                last = time.monotonic()

    async def _idle_loop(self) -> None:
        srv = self.config.server
        while True:
            await asyncio.sleep(IDLE_SWEEP_S)
            self.intake.sweep_idle(time.monotonic(), srv.idle_timeout_s,
                                   srv.partial_frame_timeout_s)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.durability.start(self._loop)
        sys.setswitchinterval(self.config.core.gil_switch_interval_us / 1e6)
        self._loop.add_reader(self._efd, self._on_commit)
        self._writer.start()
        self.checkpointer.start()
        if self.replication is not None:
            self.replication.start()
        if self.link is not None:
            # Routed before the first terminal connects: a foreign card is never decided here.
            await self.link.start()
        srv = self.config.server
        for spec in tls.terminal_listeners(srv):
            try:
                server = await self._loop.create_server(
                    lambda p=spec.proto: self.intake.protocol(p), spec.host, spec.port,
                    reuse_address=True, backlog=1024, ssl=spec.ssl)
            except OSError as exc:
                raise ListenError(f"cannot listen for {spec.name} on {spec.host}:{spec.port}: "
                                  f"{exc.strerror or exc} (another switch running? set "
                                  f"{spec.port_key})") from exc
            self.listeners.append(Listener(spec.name, server, spec.host))
        self.admission.start(self._loop)
        self._tasks.append(asyncio.create_task(self._checkpoint_loop()))
        if srv.idle_timeout_s or srv.partial_frame_timeout_s:
            self._tasks.append(asyncio.create_task(self._idle_loop()))
        if self.config.clearing.scheduled:
            self._tasks.append(asyncio.create_task(self.clearing.schedule()))

    async def _sent_to_regions(self, timeout_s: float) -> bool:
        """Whether what the region link has to publish (advices, card changes) left within
        ``timeout_s``. If not, no checkpoint at stop: the next start finds their records in
        the journal after the newest checkpoint and sends them then."""
        if self.link is None:
            return True
        deadline = time.monotonic() + timeout_s
        while self.link.unsent() and time.monotonic() < deadline and self.failed is None:
            await asyncio.sleep(0.05)
        if self.link.unsent():
            log.warning("%d advices and card changes not yet published to other regions: "
                        "no checkpoint at stop; the next start sends them from the journal",
                        self.link.unsent())
            return False
        return True

    def install_signal_handlers(self) -> None:
        assert self._loop is not None                   # set by start
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, self.stopped.set)

    async def stop(self) -> None:
        """Stop accepting, let every reply become durable and be written, checkpoint."""
        for listener in self.listeners:
            listener.server.close()
        for transport in self.intake.transports():
            transport.pause_reading()
        for task in self._tasks:
            task.cancel()
        self.admission.stop()
        if self.link is not None:
            await self.link.stop_serving()
        if self.failed is None:
            if self.engine.journal.pending:
                self.committer.submit(self.engine.journal)
            if await self._sent_to_regions(STOP_UNSENT_WAIT_S):
                self.checkpoint()
            deadline = time.monotonic() + 30
            while ((self.durability.waiting or self._pending_checkpoint is not None)
                   and time.monotonic() < deadline and self.failed is None):
                await asyncio.sleep(0.01)
        if self.link is not None:
            await self.link.stop()
        self.committer.stop()
        self.checkpointer.stop()
        if self.replication is not None:
            self.replication.stop()
        await asyncio.to_thread(self._writer.join, 30)
        await asyncio.to_thread(self.checkpointer.join, 120)
        if self.replication is not None:
            await asyncio.to_thread(self.replication.join, 10)
        assert self._loop is not None                   # set by start
        self._loop.remove_reader(self._efd)
        os.close(self._efd)
        for transport in self.intake.transports():
            transport.close()
