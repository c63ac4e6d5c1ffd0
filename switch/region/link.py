"""A regional switch's link to the others over NATS (issue 15, docs/regions.md).

Acquirer: when the core stops before a request another region decides (``core/forward.pyx``),
the intake holds the connection (``Intake.relay``) and :meth:`RegionLink.forward` sends what
the core collected, one NATS request per destination (chunked at
``protocols.forward.BATCH_MAX``), all at once; the intake installs the answers and runs the
held buffer again, so the terminal's replies keep their order. A destination that does not
answer within ``region.timeout_ms`` gets 91 for each of its requests.

Issuer: forwarded batches arrive on ``onecard.auth.<region>`` (a queue group, so several
processes of one region could share them); each is decided in one core call, and answered once
its journal records are durable, like a terminal's replies.

Routing: the table in the NATS key-value bucket is read at start and watched; a new version
reconfigures the core's router without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from onecard.core.state import KIND_CARD_ADMIN, KIND_FORWARDED
from onecard.protocols import forward
from onecard.protocols.journal_codec import decode
from onecard.switch.errors import ListenError, RegionError
from onecard.switch.region import routing, standin
from onecard.switch.region.advices import Advices
from onecard.switch.region.blocks import Blocks
from onecard.switch.region.catalogues import CatalogueSync
from onecard.switch.region.context import RegionContext

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.subscription import Subscription

    from onecard.switch.config import RegionConfig
    from onecard.switch.region.routing import RoutingTable

log = logging.getLogger("onecard.region")

ERROR_HEADER = "Onecard-Error"           # an issuer's refusal of a whole batch, in words
CONNECT_TIMEOUT_S = 5.0
FIRST_CONNECT_TIMEOUT_S = 15.0           # a switch that cannot join its region does not start
STOP_TIMEOUT_S = 10.0                    # for answers and relays in flight when stopping
# Forwarding round trips, µs: from loopback (a few hundred) to the timeout's order.
LATENCY_BOUNDS_US = (250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
                     500_000, 1_000_000)


class RegionLinkError(RegionError, ListenError):
    """The switch cannot join its region (NATS unreachable at start): said in one line. A
    ListenError too: it stops a start as a listener that cannot open does."""


class PeerStats:
    """Round trips to one destination region, aggregated per batch."""

    __slots__ = ("batches", "failed", "latency", "latency_sum_us")

    def __init__(self) -> None:
        self.latency = np.zeros(len(LATENCY_BOUNDS_US) + 1, dtype=np.uint64)
        self.latency_sum_us = 0
        self.batches = 0
        self.failed = 0                  # unanswered in time, or refused: answered 91

    def observe(self, latency_us: int, ok: bool) -> None:
        self.latency[np.searchsorted(LATENCY_BOUNDS_US, latency_us)] += 1
        self.latency_sum_us += latency_us
        self.batches += 1
        self.failed += not ok


class RegionLink:
    """A regional switch's side of NATS: it forwards batches of requests to the regions that
    decide them (``forward``; the intake holds the connection and reruns its buffer), answers
    the batches other regions forward here, and runs advices, blocks and catalogues."""

    def __init__(self, context: RegionContext, config: RegionConfig) -> None:
        assert config.enabled, "a link is for a named region"
        assert context.name == config.name
        self.context = context
        self.config = config
        self.name = config.name
        self.timeout_s = config.timeout_ms / 1000
        self.peers: list[str] = []
        self.table_version = 0
        self.owners: dict[int, str] = {}
        self.limits: dict = {}                   # region -> standin.Limits it published
        self.stats: dict[str, PeerStats] = {}
        self.served_batches = 0
        self.served_requests = 0
        self.nc: Client | None = None            # connected by start, never unset
        self.advices: Advices | None = None
        self.blocks: Blocks | None = None
        self.catalogue: CatalogueSync | None = None
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task] = set()   # relays and answers: finish before stopping
        # The watch and the advice loops (context.loops): cancelled at stop.

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, follow the routing table, take forwarded batches and advices; a NATS
        that cannot be reached (or has no JetStream) stops the start with one line."""
        # NATS only for a regional switch: the single switch (and its /metrics, which
        # imports this module) needs none.
        import nats.errors

        try:
            await self._start()
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            # The loops started so far, and the connection: whatever else is failing.
            with contextlib.suppress(Exception):
                await self.stop()
            raise RegionLinkError(f"region {self.name}: NATS at "
                                  f"{', '.join(self.config.nats_urls)}: {exc!r} (is it running, "
                                  "with JetStream? [region] nats_urls)") from exc

    async def _start(self) -> None:
        import nats

        # Reconnects are unbounded once linked; the first connection is not (nats-py would
        # go round the servers for ever).
        self.nc = await asyncio.wait_for(
            nats.connect(servers=list(self.config.nats_urls), name=f"onecard-{self.name}",
                         connect_timeout=CONNECT_TIMEOUT_S, max_reconnect_attempts=-1,
                         error_cb=self._nats_error,
                         disconnected_cb=self._nats_disconnected),
            FIRST_CONNECT_TIMEOUT_S)
        kv = await routing.open_bucket(self.nc.jetstream(), self.config.routing_replicas)
        found = await routing.current(kv)
        if found is not None:
            self.apply(found[0])
        else:
            log.warning("region %s: no routing table yet: every card is decided here until "
                        "one is published (onecard region route)", self.name)
        self.context.loops.add(routing.watch(kv, self.apply, last_version=self.table_version))
        mine = standin.Limits(self.config.standin_per_txn_fen, self.config.standin_per_day_fen)
        await standin.publish(kv, self.name, mine)
        limits = standin.Follower(self.apply_limits)
        await limits.reread(kv)
        self.spawn_loop(routing.follow(kv, forward.STAND_IN_KEY + "*", limits))
        self.advices = Advices(self.context)
        await self.advices.start(self.nc.jetstream(), self.config.routing_replicas)
        tail, tids, owner_of = self._journal_tail()
        stored = await self.advices.stored(sorted(set(self.owners.values()) - {self.name}))
        resent = self.advices.resend(tail, tids, owner_of, self.context.keys, stored)
        if resent:
            log.info("region %s: %d advices from the journal sent again", self.name, resent)
        self.catalogue = CatalogueSync(self.context)
        await self.catalogue.start(self.nc.jetstream(), self.config.routing_replicas)
        self.blocks = Blocks(self.context)
        self.blocks.start(self.nc.jetstream(), self.config.routing_replicas,
                          [r.card for r in tail if r.kind_name == "CARD_ADMIN"])
        self._sub = await self.nc.subscribe(forward.SUBJECT_PREFIX + self.name,
                                            queue=f"onecard-{self.name}", cb=self._serve)
        log.info("region %s: linked over NATS (%s), routing table version %d",
                 self.name, ", ".join(self.config.nats_urls), self.table_version)

    async def stop_serving(self) -> None:
        """Take no more forwarded batches (the switch is stopping)."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()

    async def stop(self) -> None:
        """After the last commits: let batches being answered and relays in flight finish
        (each is bounded by a commit or the forwarding timeout), then disconnect."""
        await self.stop_serving()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_TIMEOUT_S)
        for part in (self.advices, self.blocks):
            if part is not None:
                part.closed = True
        tasks = [*self._tasks, *self.context.loops]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a client library that swallows a cancellation must not hold up the
            # switch's stop (the loops also end on ``closed``).
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        if self.nc is not None:
            await self.nc.close()
        if self.catalogue is not None:
            self.catalogue.close()

    def apply(self, table: RoutingTable) -> None:
        """A routing table version: which peer decides each province from now on."""
        dest, peers = routing.destinations(table, self.name)
        self.context.engine.router.configure(dest)
        self.peers, self.table_version = list(peers), table.version
        self.owners = dict(table.owners)
        self._configure_stand_in()
        mine = sorted(p for p, r in table.owners.items() if r == self.name)
        log.info("region %s: routing table version %d: owns %s; peers %s", self.name,
                 table.version, ",".join(map(str, mine)) or "nothing", ", ".join(peers) or "none")

    def apply_limits(self, limits: dict) -> None:
        """The stand-in limits every region published (standin.Follower)."""
        self.limits = limits
        self._configure_stand_in()

    def _configure_stand_in(self) -> None:
        per_txn, per_day = standin.arrays(self.owners, self.limits, self.name)
        self.context.engine.router.configure_stand_in(per_txn, per_day)

    def unsent(self) -> int:
        """What this switch has to publish and holds only in memory: advices waiting for
        the stream (or dropped from its full queue) and card changes waiting for the
        blocked-cards bucket. Their journal records must stay after the newest checkpoint,
        where the resend at start (``_journal_tail``) finds them: a checkpoint waits while
        this is not 0 (switch/server.py), or a crash, or a stop, would lose them."""
        n = 0
        if self.advices is not None:
            n += self.advices.pending + self.advices.dropped
        if self.blocks is not None:
            n += len(self.blocks.changed)
        return n

    def ready(self) -> tuple[bool, str]:
        if self.nc is None or not self.nc.is_connected:
            return False, "NATS not connected"
        return True, f"routing table version {self.table_version}"

    async def _nats_error(self, exc: Exception) -> None:
        log.warning("region %s: NATS: %s", self.name, exc)

    async def _nats_disconnected(self) -> None:
        log.warning("region %s: NATS disconnected; reconnecting (forwarded requests get 91 "
                    "meanwhile)", self.name)

    def _journal_tail(self) -> tuple[list, np.ndarray, object]:
        """The journal records after the newest checkpoint that may need publishing again
        (FORWARDED: advices; CARD_ADMIN: blocked cards), the terminals' ids, and the owner of
        a province now."""
        recs, nos = self.context.store.records_since(self.context.since_no)
        tids = self.context.engine.state.terminals["tid"]          # as the core keys them
        owners = self.owners

        def owner_of(province: int) -> str | None:
            region = owners.get(province)
            return region if region and region != self.name else None

        # Decoded one by one: they are few.
        wanted = (recs["kind"] == KIND_FORWARDED) | (recs["kind"] == KIND_CARD_ADMIN)
        return decode(recs[wanted], nos[wanted]), tids, owner_of

    def spawn_loop(self, coro) -> asyncio.Task:
        """A task that runs as long as the link (cancelled at stop)."""
        return self.context.spawn_loop(coro)

    def spawn(self, coro) -> asyncio.Task:
        """A task the link lets finish before it stops (a relay, an answer)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- acquirer ----------------------------------------------------------------------------

    def advise(self, answers: list, unanswered: list, stood_in: list,
                peers: list[str]) -> None:
        """Requests the issuer did not answer (``Router.install``): stand-in advices for
        those the core stood in for, reversal advices for purchases and voids answered 91,
        each once the FORWARDED records just journaled are durable (advices.py)."""
        if self.advices is None:
            return
        journal_no = self.context.engine.journal.next_no - 1
        self.advices.queue_stand_in(peers, stood_in, journal_no)
        for (d, _, _), reqs in zip(answers, unanswered, strict=True):
            if len(reqs):
                self.advices.queue_unanswered(peers[d - 1], reqs, journal_no)

    async def forward(self, batches: list[tuple[int, bytes]], peers: list[str]) -> list:
        """Send each destination's REQUEST records to ``peers[destination - 1]``, at most
        BATCH_MAX per NATS request, all at once: [(destination, chunk sent, ANSWER bytes,
        None (no answer in time, or refused) or forward.UNDELIVERED (nobody took it))] in the
        order sent."""
        step = forward.BATCH_MAX * forward.REQUEST.itemsize
        chunks = [(d, sent[i:i + step]) for d, sent in batches
                  for i in range(0, len(sent), step)]
        got = await asyncio.gather(*(self._request(peers[d - 1], chunk) for d, chunk in chunks))
        return [(d, chunk, answer) for (d, chunk), answer in zip(chunks, got, strict=True)]

    async def _request(self, peer: str, payload: bytes) -> bytes | str | None:
        import nats.errors

        start_ns = time.perf_counter_ns()
        answer: bytes | str | None = None
        assert self.nc is not None                # batches are forwarded once started
        try:
            msg = await self.nc.request(forward.SUBJECT_PREFIX + peer, payload,
                                        timeout=self.timeout_s,
                                        headers={forward.HEADER: str(forward.VERSION),
                                                 forward.REGION_HEADER: self.name})
            refused = (msg.headers or {}).get(ERROR_HEADER)
            if refused:
                log.warning("region %s: %s refused a forwarded batch: %s", self.name, peer,
                            refused)
            else:
                answer = msg.data
        except nats.errors.NoRespondersError:
            # Nobody subscribes to the issuer's subject: no switch of that region received
            # the requests, so the core may stand in for them.
            answer = forward.UNDELIVERED
        except (TimeoutError, nats.errors.Error) as exc:
            log.debug("region %s: %s did not answer: %r", self.name, peer, exc)
        stats = self.stats.get(peer) or self.stats.setdefault(peer, PeerStats())
        stats.observe((time.perf_counter_ns() - start_ns) // 1000,
                      answer is not None and answer is not forward.UNDELIVERED)
        return answer

    # ---- issuer ------------------------------------------------------------------------------

    async def _serve(self, msg) -> None:
        headers = msg.headers or {}
        version = headers.get(forward.HEADER)
        ctx = self.context
        if version != str(forward.VERSION):
            await self._refuse(msg, f"forwarding version {version!r}, this switch speaks "
                                    f"{forward.VERSION}")
            return
        if ctx.durability.failed is not None:
            await self._refuse(msg, "journal failed")
            return
        try:
            answers, end_no = ctx.engine.serve_forwarded(msg.data)
        except ValueError as exc:
            await self._refuse(msg, str(exc))
            return
        self.served_batches += 1
        self.served_requests += len(answers) // forward.ANSWER.itemsize
        # Answered once durable, without holding up the next batch: the subscription's
        # callback returns at once.
        self.spawn(self._answer(msg, answers, end_no))

    async def _answer(self, msg, answers: bytes, end_no: int) -> None:
        try:
            if end_no:
                await self.context.durability.committed(end_no - 1)
        except RuntimeError as exc:
            await self._refuse(msg, str(exc))
            return
        await msg.respond(answers)

    async def _refuse(self, msg, why: str) -> None:
        if msg.reply:
            assert self.nc is not None            # the message came through it
            await self.nc.publish(msg.reply, b"", headers={ERROR_HEADER: why[:200]})
