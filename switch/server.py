"""The asyncio server: one listener per protocol, one Protocol object per connection, and the
release of replies once the journal records they depend on are durable.

Per received buffer the server makes one call into the core (``Engine.process``), so the work
per message is all compiled; what remains in Python here is per batch. Replies keep request
order on each connection: every batch waits for all journal records appended before it was
answered, and records become durable in order, so batches are released in the order they were
processed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onecard.core.commit import GroupCommitter
from onecard.core.engine import ISO8583, NATIVE, Engine
from onecard.protocols import clearing
from onecard.protocols.enums import PROTO
from onecard.switch import logs, tls
from onecard.switch.admission import (
    FULL_READ_BYTES,
    Admission,
    RateLimitedLog,
    first_frame_limit_applies,
)
from onecard.switch.config import Config
from onecard.switch.errors import ListenError
from onecard.switch.security import holders_file
from onecard.switch.store import sqlite
from onecard.switch.store.loader import Loaded
from onecard.switch.store.snapshots import Checkpointer

if TYPE_CHECKING:
    from onecard.switch.region.link import RegionLink
    from onecard.switch.store.pg.committer import PgCommitter
    from onecard.switch.store.pg.lease import Lease

log = logging.getLogger("onecard.server")
IDLE_SWEEP_S = 1.0              # how often connections are checked for the idle timeouts
STOP_UNSENT_WAIT_S = 5.0        # at stop, for advices still queued for other regions

PROTOCOL_NAMES = PROTO.name_of          # keyed by ISO8583 and NATIVE, the core's Proto values


class Connection(asyncio.Protocol):
    """One terminal link. Buffers partial frames; everything else is the core's."""

    __slots__ = ("_buf", "authenticated", "closing", "fd", "forwarding", "last_rx",
                 "partial_since", "paused", "peer", "peer_host", "proto", "switch", "transport",
                 "waiting_need")

    def __init__(self, switch: Switch, proto: int) -> None:
        self.switch = switch
        self.proto = proto
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self.closing = False
        self.paused = False
        self.forwarding = False               # waiting for other regions' answers (link.py)
        self.peer = None
        self.peer_host: str | None = None     # set once admission.accept() counted it
        self.last_rx = self.partial_since = time.monotonic()
        # Native connections get a small first-frame limit until a frame passes a MAC check.
        self.authenticated = not first_frame_limit_applies(proto)
        self.waiting_need = 0                 # journal record its last queued batch needs
        self.fd = -1                          # for FIONREAD on full reads (admission.py)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        if not self.switch.admission.accept(self):
            self.closing = True
            transport.abort()                 # refused: closed at once, counted, logged
            return
        transport.set_write_buffer_limits(high=self.switch.config.server.write_buffer_high_bytes)
        self.switch.connections[self.proto].add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.switch.connections[self.proto].discard(self)
        self.switch.paused.discard(self)
        self.switch.admission.release(self)
        self.transport = None

    def close_now(self) -> None:
        """Drop the connection and its partial frame (limits of switch/admission.py)."""
        self.closing = True
        self.switch.admission.partial_bytes -= len(self._buf)
        self._buf.clear()
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        sw = self.switch
        self.last_rx = now = time.monotonic()
        buf = self._buf
        held = len(buf)
        if self.forwarding:
            # Read before reading paused: it waits behind the requests being forwarded.
            buf += data
            sw.admission.partial(self, held, 0, now)
            return
        if held:
            buf += data
            data = buf
        adm = sw.admission
        if (adm.refusing is None and len(data) < FULL_READ_BYTES
                and (not sw._submit_soon or now - sw.iteration_start < adm.iteration_max_s)):
            consumed, replies, batch, close = sw.engine.process(self.proto, data)
        else:                                     # batch -1: refused (admission.handle)
            consumed, replies, batch, close = adm.handle(self, data, now)
        if not self.authenticated and batch > 0 and sw.engine.authenticated:
            self.authenticated = True
        self.ran(data, held, (consumed, replies, batch, close))

    def ran(self, data: bytes | bytearray, held: int, result: tuple, *,
            relay: bool = True) -> None:
        """After a core run over ``data`` (the buffer, or a read when nothing was held):
        keep what it did not consume, hand over the replies, and forward what the core
        stopped at (``relay``; switch/region/link.py reruns the buffer itself)."""
        consumed, replies, batch, close = result
        sw = self.switch
        buf = self._buf
        if data is buf:
            del buf[:consumed]
        elif consumed < len(data):
            buf += data[consumed:]
        if replies:
            sw.deliver(self, replies, batch, close)
        elif close:
            self.transport.close()
        if close:
            self.closing = True
            sw.admission.partial_bytes -= held
            buf.clear()
            sw.engine.router.take()           # nothing to forward for a closed connection
        elif buf or held:
            sw.admission.partial(self, held, consumed, self.last_rx)
        if relay and sw.engine.router.pending:
            sw.link.relay(self)

    def hold(self) -> None:
        """Stop reading while the buffer waits for other regions' answers (bounded by the
        forwarding timeout): replies keep request order and held bytes stay bounded."""
        self.forwarding = True
        if self.transport is not None:
            self.transport.pause_reading()

    def release(self) -> None:
        self.forwarding = False
        if self.transport is not None and not self.paused and not self.closing:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        # The terminal is not reading its replies: stop reading its requests.
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.paused and not self.forwarding:
            self.transport.resume_reading()


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
        self.durable_no = loaded.next_record_no
        self.waiting: deque = deque()
        self.paused: set[Connection] = set()
        self.connections: dict[int, set[Connection]] = {ISO8583: set(), NATIVE: set()}
        self.listeners: list[Listener] = []
        self.failed: BaseException | None = None
        self.idle_closed = 0
        self.idle_log = RateLimitedLog("connections closed: silent, or a frame unfinished",
                                       event="connection_closed")
        self.holder_watch = holders_file.FailureWatch(self.state.holders)
        self.stopped = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.committer, self.checkpointer = self._writers(config, loaded, lease)
        self.replication = None                # PostgreSQL: the primary's standbys, polled
        if config.store.backend == "postgresql":
            from onecard.switch.store.pg.replication import ReplicationMonitor

            self.replication = ReplicationMonitor(config.store.dsn)
        self._writer = threading.Thread(target=self.committer.run, name="onecard-group-commit",
                                        daemon=True)
        self.last_checkpoint_no = loaded.snapshot_upto
        self._pending_checkpoint: tuple[int, dict] | None = None
        self._horizon_segment = None          # the horizon rows of the last checkpoint taken
        self._record_waiters: list[tuple[int, asyncio.Future]] = []
        self.started_at = time.time()
        self._tasks: list[asyncio.Task] = []
        self._submit_soon = False
        self.iteration_start = 0.0
        self.admission = Admission(self)
        self.link: RegionLink | None = None
        # Called after the catalogue changed (the admin API's cached public listing).
        self.catalogue_listeners: list = []
        if config.region.enabled:
            from onecard.switch.region.link import RegionLink

            self.link = RegionLink(self, config.region)
        from onecard.switch.clearing.service import ClearingService

        self.clearing = ClearingService(self)

    def _writers(self, config: Config, loaded: Loaded,
                 lease: Lease | None) -> tuple[GroupCommitter | PgCommitter, Checkpointer]:
        """The journal's writer and the checkpoints' for the configured store (PostgreSQL:
        under the lease this switch took over)."""
        st = config.store
        if st.backend == "postgresql":
            from onecard.switch.store.pg import lease as pg_lease
            from onecard.switch.store.pg.committer import PgCommitter

            assert lease is not None, "the PostgreSQL store is written under a lease"
            committer = PgCommitter(st.dsn, self._efd, loaded.next_record_no, lease.epoch,
                                    in_flight=st.commits_in_flight,
                                    commit_timeout_s=st.commit_timeout_s,
                                    failover_timeout_s=st.failover_timeout_s)
            return committer, Checkpointer(self.data_dir, None, st.snapshots_kept,
                                           keys=loaded.keys, dsn=st.dsn,
                                           fence=pg_lease.fence(lease.epoch),
                                           horizon_chain=loaded.horizon_chain)
        committer = GroupCommitter(str(sqlite.db_path(self.data_dir)), self._efd,
                                   loaded.next_record_no, synchronous=st.synchronous,
                                   full_retry_ms=st.full_retry_ms)
        return committer, Checkpointer(self.data_dir, sqlite.db_path(self.data_dir),
                                       st.snapshots_kept, keys=loaded.keys,
                                       wal_limit_bytes=st.wal_checkpoint_mb << 20,
                                       committer=committer, horizon_chain=loaded.horizon_chain)

    # ---- replies and durability --------------------------------------------------------------

    def deliver(self, conn: Connection, replies: bytes, batch: int, close: bool) -> None:
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
        if not self._submit_soon and need > self.committer.submitted_no:
            self._submit_soon = True
            self.iteration_start = conn.last_rx   # this loop iteration's first read
            self._loop.call_soon(self._submit_batches)
        if self.committer.durable_no > self.durable_no:
            # A commit finished while this loop iteration was busy with sockets: release its
            # replies now rather than when the event loop reaches the eventfd.
            self._durable(self.committer.durable_no)
        if need <= self.durable_no:
            self._write(conn, replies, batch, close)
            return
        self.waiting.append((need, conn, replies, batch, close))
        conn.waiting_need = need
        if len(self.waiting) > self.config.server.waiting_batches_max and not conn.paused:
            conn.paused = True
            self.paused.add(conn)
            conn.transport.pause_reading()

    def _submit_batches(self) -> None:
        self._submit_soon = False
        self.submit()

    def _write(self, conn: Connection, replies: bytes, batch: int, close: bool) -> None:
        transport = conn.transport
        if transport is None:
            return                           # the terminal went away; its state is journaled
        transport.write(replies)
        self.engine.metrics.written(batch)
        if close:
            transport.close()

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
        self._durable(self.committer.durable_no)

    def catalogue_changed(self, db) -> None:
        """A new catalogue version is in the store: the next batch enforces it."""
        from onecard.switch import catalogue

        self.state.set_catalogue(*catalogue.build(db))
        for listener in self.catalogue_listeners:
            listener()

    def cards_changed(self, cards: list[int]) -> None:
        """Cards whose status an operator changed (durably): other regions must learn it
        (switch/region/blocks.py)."""
        if self.link is not None and self.link.blocks is not None:
            self.link.blocks.cards_changed(cards)

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

    def _durable(self, end_no: int) -> None:
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
            # Several batches released at once: one write per connection (fewer syscalls),
            # still in each connection's request order.
            released: dict[Connection, list] = {}
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
        if self.paused and len(waiting) < self.config.server.waiting_batches_max // 2:
            for conn in list(self.paused):
                conn.paused = False
                conn.last_rx = time.monotonic()    # the pause is not the terminal's silence
                if conn.transport is not None and not conn.forwarding:
                    conn.transport.resume_reading()
            self.paused.clear()
        if self._pending_checkpoint is not None and self._pending_checkpoint[0] <= end_no:
            self.checkpointer.submit(*self._pending_checkpoint)
            self._pending_checkpoint = None

    def _fail(self, exc: BaseException) -> None:
        # Answers that are not durable must never leave: drop every connection and stop.
        self.failed = exc
        self.waiting.clear()
        for _, future in self._record_waiters:
            if not future.done():
                future.set_exception(RuntimeError(f"journal failed: {exc}"))
        self._record_waiters.clear()
        for conns in self.connections.values():
            for conn in list(conns):
                if conn.transport is not None:
                    conn.transport.abort()
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
        if upto <= self.durable_no:
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
            now = time.monotonic()
            for conns in self.connections.values():
                for conn in list(conns):
                    idle_s = now - conn.last_rx
                    if conn.transport is None or conn.closing or conn.paused:
                        continue           # paused: not read because of the switch's backlog
                    # A frame is timed from its first byte: a trickle never resets it.
                    frame_s = now - conn.partial_since if conn._buf else 0.0
                    if ((srv.idle_timeout_s and idle_s > srv.idle_timeout_s)
                            or (srv.partial_frame_timeout_s
                                and frame_s > srv.partial_frame_timeout_s)):
                        self.idle_closed += 1
                        self.idle_log.note(f"{PROTOCOL_NAMES[conn.proto]} from {conn.peer}: "
                                           + (f"a frame unfinished after {frame_s:.0f} s"
                                              if conn._buf else f"silent for {idle_s:.0f} s"))
                        conn.close_now()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
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
                    lambda p=spec.proto: Connection(self, p), spec.host, spec.port,
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
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, self.stopped.set)

    async def stop(self) -> None:
        """Stop accepting, let every reply become durable and be written, checkpoint."""
        for listener in self.listeners:
            listener.server.close()
        for conns in self.connections.values():
            for conn in conns:
                if conn.transport is not None:
                    conn.transport.pause_reading()
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
            while ((self.waiting or self._pending_checkpoint is not None)
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
        self._loop.remove_reader(self._efd)
        os.close(self._efd)
        for conns in self.connections.values():
            for conn in list(conns):
                if conn.transport is not None:
                    conn.transport.close()
