"""Terminal connections: each one's buffer of partial frames, and the only Python caller of
the core's ``Engine.process`` and ``Engine.refuse``.

Per received buffer the intake makes one call into the core, so the work per message is all
compiled; so is the work per read: ``Connection`` derives from core/intake.pyx's ``Conn``,
whose ``data_received`` decides the common read (admission admitting, a small read, the loop
iteration within its budget) from C fields, calls the core without a Python call
(``Engine.feed``) and hands the replies to ``Durability.deliver`` (compiled too). Every other
read asks admission for a verdict here (run, run timed, or refuse with a reason) and the
intake acts on it: admission itself never calls the core and never sees a buffer. Replies go
to ``Durability.deliver``, which writes them once their records are durable.

A request another region decides stops the core (the router collects it); the intake holds
the connection's buffer, has the region link forward what was collected
(``RegionLink.forward``), installs the answers and runs the same buffer again, up to
``ROUNDS_MAX`` times (the routing table may change between rounds). The link never sees a
connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from onecard.core.engine import ISO8583, NATIVE, Engine
from onecard.core.intake import Conn
from onecard.protocols.enums import PROTO
from onecard.switch.admission import (
    NATIVE_PREFIX_BYTES,
    RUN,
    RUN_TIMED,
    Admission,
    RateLimitedLog,
    first_frame_limit_applies,
)
from onecard.switch.durability import Durability

if TYPE_CHECKING:
    from onecard.switch.region.link import RegionLink

log = logging.getLogger("onecard.server")
ROUNDS_MAX = 8                  # reruns of one held buffer (routing changed meanwhile)
PROTOCOL_NAMES = PROTO.name_of  # keyed by ISO8583 and NATIVE, the core's Proto values


class Connection(Conn, asyncio.Protocol):
    """One terminal link. Buffers partial frames; everything else is the core's. The read
    path (``data_received``, ``ran``) and the connection's fields are compiled
    (core/intake.pyx's ``Conn``); its life (made, lost, held, paused) is here."""

    __slots__ = ()

    def __init__(self, intake: Intake, proto: int) -> None:
        super().__init__(intake, proto)
        # Native connections get a small first-frame limit until a frame passes a MAC check.
        self.authenticated = not first_frame_limit_applies(proto)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)     # a stream server's
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        it = self.intake
        host = self.peer[0] if isinstance(self.peer, tuple) else str(self.peer)
        if not it.admission.accept(host, self.proto, len(it.connections[self.proto])):
            self.closing = True
            transport.abort()                 # refused: closed at once, counted, logged
            return
        self.peer_host = host
        transport.set_write_buffer_limits(high=it.write_buffer_high_bytes)
        it.connections[self.proto].add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        it = self.intake
        it.connections[self.proto].discard(self)
        it.durability.paused.discard(self)
        self._drop_partial()
        if self.peer_host is not None:
            it.admission.release(self.peer_host)
            self.peer_host = None
        self.transport = None

    def close_now(self) -> None:
        """Drop the connection and its partial frame (limits of switch/admission.py)."""
        self.closing = True
        self._drop_partial()
        if self.transport is not None:
            self.transport.abort()

    def _drop_partial(self) -> None:
        """The partial frame held, no longer counted against server.partial_bytes_max."""
        self.intake.admission.partial_bytes -= len(self._buf)
        self._buf.clear()

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
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.paused and not self.forwarding:
            self.transport.resume_reading()


class Intake:
    """The switch's terminal connections and what they hold, by protocol."""

    def __init__(self, engine: Engine, admission: Admission, durability: Durability,
                 write_buffer_high_bytes: int) -> None:
        self.engine = engine
        self.admission = admission
        self.durability = durability
        self.write_buffer_high_bytes = write_buffer_high_bytes
        self.connections: dict[int, set[Connection]] = {ISO8583: set(), NATIVE: set()}
        self.link: RegionLink | None = None  # a regional switch's forwarder
        self.idle_closed = 0
        self.idle_log = RateLimitedLog("connections closed: silent, or a frame unfinished",
                                       event="connection_closed")

    def protocol(self, proto: int) -> Connection:
        """The protocol factory of a listener."""
        return Connection(self, proto)

    # ---- the reads the fast path does not take -----------------------------------------------

    def handle(self, conn: Connection, data, now: float) -> tuple[int, bytes, int, bool]:
        """Refusing, a full read, or a loop iteration already busier than the budget: as
        admission says. Returns what Engine.process does, with batch -1 for a refusal."""
        dur = self.durability
        busy_s = now - dur.iteration_start if dur.submit_soon else 0.0
        verdict = self.admission.verdict(conn.fd, len(data), busy_s)
        if verdict is RUN:
            return self.engine.process(conn.proto, data)
        if verdict is RUN_TIMED:
            started = time.perf_counter()
            result = self.engine.process(conn.proto, data)
            self.admission.learn_cost(time.perf_counter() - started, len(data))
            return result
        assert isinstance(verdict, int), verdict
        return self.engine.refuse(conn.proto, data, verdict)

    # ---- partial frames ----------------------------------------------------------------------

    def partial(self, conn: Connection, held: int, consumed: int, now: float) -> None:
        """After a read that left or had a partial frame: ``held`` bytes were buffered before
        it, ``consumed`` bytes of (buffer + read) went to the core."""
        adm = self.admission
        buf = conn._buf
        adm.partial_bytes += len(buf) - held
        if not buf:
            return
        if held == 0 or consumed > 0:
            conn.partial_since = now           # a new frame began in this read: time it
        if not conn.authenticated and len(buf) >= NATIVE_PREFIX_BYTES:
            announced = int.from_bytes(buf[:NATIVE_PREFIX_BYTES], "big")
            if not adm.first_frame_admitted(announced, conn.peer_host):
                conn.close_now()
        if adm.partial_bytes > adm.partial_bytes_max:
            self._shrink_partials()

    def _shrink_partials(self) -> None:
        # Rare (only over budget): close the largest holders until under it.
        adm = self.admission
        conns = [c for cs in self.connections.values() for c in cs if c._buf]
        conns.sort(key=lambda c: len(c._buf), reverse=True)
        for c in conns:
            if adm.partial_bytes <= adm.partial_bytes_max:
                break
            adm.partial_over_budget.note(f"{c.peer_host} held {len(c._buf)} bytes")
            c.close_now()

    def sweep_idle(self, now: float, idle_timeout_s: float,
                   partial_frame_timeout_s: float) -> None:
        """Close connections silent for ``idle_timeout_s`` or holding a frame unfinished
        ``partial_frame_timeout_s`` after its first byte (0: no limit)."""
        for conns in self.connections.values():
            for conn in list(conns):
                idle_s = now - conn.last_rx
                if conn.transport is None or conn.closing or conn.paused:
                    continue           # paused: not read because of the switch's backlog
                # A frame is timed from its first byte: a trickle never resets it.
                frame_s = now - conn.partial_since if conn._buf else 0.0
                if ((idle_timeout_s and idle_s > idle_timeout_s)
                        or (partial_frame_timeout_s and frame_s > partial_frame_timeout_s)):
                    self.idle_closed += 1
                    self.idle_log.note(f"{PROTOCOL_NAMES[conn.proto]} from {conn.peer}: "
                                       + (f"a frame unfinished after {frame_s:.0f} s"
                                          if conn._buf else f"silent for {idle_s:.0f} s"))
                    conn.close_now()

    # ---- every connection at once ------------------------------------------------------------

    def transports(self) -> list[asyncio.Transport]:
        """Every open connection's transport (a list: closing one changes the sets)."""
        return [conn.transport for conns in self.connections.values() for conn in conns
                if conn.transport is not None]

    # ---- requests other regions decide -------------------------------------------------------

    def relay(self, conn: Connection) -> None:
        """The core stopped before a request another region decides: take what it collected
        and run the connection's held buffer again once the answers are in."""
        assert self.link is not None, "the core forwards only on a regional switch"
        order, batches = self.engine.router.take()
        conn.hold()
        self.link.spawn(self._relay(self.link, conn, order, batches))

    async def _relay(self, link: RegionLink, conn: Connection, order, batches: list) -> None:
        engine = self.engine
        try:
            for _ in range(ROUNDS_MAX):
                peers = link.peers               # as routed: a new table may come meanwhile
                answers = await link.forward(batches, peers)
                if conn.closing or conn.transport is None:
                    # The terminal went away: what issuers approved is journaled there, and
                    # its retransmission will be answered from their rings.
                    return
                router = engine.router
                unanswered = router.install(order, answers)
                try:
                    result = engine.process(conn.proto, conn._buf)
                    order, batches = router.take()
                    stood_in = router.take_advices()
                finally:
                    router.clear()
                conn.ran(conn._buf, len(conn._buf), result, relay=False)
                link.advise(answers, unanswered, stood_in, peers)
                if not batches:
                    return
            log.error("region %s: a connection's requests were rerouted %d times (routing "
                      "table changing?): closing it", link.name, ROUNDS_MAX)
            conn.close_now()
        finally:
            conn.release()
