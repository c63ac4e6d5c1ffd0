"""Unusable cards, propagated between regional switches (issue 15, docs/regions.md).

A card's issuer is the only switch that decides its requests online, so a card reported lost in
its home region is refused wherever it is used while the issuer answers. What other regions
need is for when it does not: stand-in must refuse a card that is lost, frozen, replaced or on
the issuer's deny list (a negative balance), and must learn it within a second.

The owner publishes each of its cards that changed (a status change by an operator, a deny-list
change by a record) into the JetStream key-value bucket ``onecard_blocked``: key
``<region>.<card index>`` (never the card number: keys travel in subjects and logs), value the
card number, its status and whether it is deny-listed. The bucket keeps the latest value per
card (history 1), so a switch that starts, or comes back, reads the current set from the
bucket's watch and then follows its changes. The owner's store stays the source of truth: the
bucket is rebuilt from it (``_tail.<region>`` says how far its deny log was published; card
changes after the newest checkpoint are published again at start).

Every other switch applies what it reads twice: its stand-in refuses the card
(``Router.block``), and a deny-listed card goes onto its own transit deny list as a journaled
FOREIGN_DENY record (off it again when its issuer takes it off), so the gates of every region
learn it in their deny-list sync and refuse it offline.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING

import numpy as np

from onecard.core import operations
from onecard.core.state import HOLDER_DENIED
from onecard.protocols.forward import province_of_pan
from onecard.switch.region import routing

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from onecard.switch.region.context import RegionContext

log = logging.getLogger("onecard.region")

BUCKET = "onecard_blocked"
TAIL_PREFIX = "_tail."                   # + region: deny-log version published
VALUE = np.dtype([("pan", "<u8"), ("status", "u1"), ("denied", "u1")])
PUBLISH_PERIOD_S = 0.05                  # how often the deny log is looked at
PUBLISH_BATCH_MAX = 4_096                # cards published before the tail is moved on
RETRY_S = 1.0


async def open_bucket(js, replicas: int) -> KeyValue:
    return await routing.open_bucket(js, replicas, BUCKET, history=1,
                                     description="onecard: regions' unusable cards")


def encode(pan: int, status: int, denied: bool) -> bytes:
    return np.array([(pan, status, denied)], dtype=VALUE).tobytes()


def decode(data: bytes) -> tuple[int, int, bool]:
    if len(data) != VALUE.itemsize:
        raise ValueError(f"blocked-card value of {len(data)} bytes, not {VALUE.itemsize}")
    v = np.frombuffer(data, dtype=VALUE)[0]
    return int(v["pan"]), int(v["status"]), bool(v["denied"])


class Blocks:
    """The owner's publisher of its cards' changes, and the follower of everyone else's."""

    def __init__(self, region: RegionContext) -> None:
        self.region = region
        self.changed: set[int] = set()          # card indexes to publish
        self.wakeup = asyncio.Event()
        self.deny_published = 0                 # deny-log version published
        self.published = 0                      # card values put
        self.foreign_deny_changes = 0           # other regions' cards onto or off the deny list
        self.closed = False

    def start(self, js, replicas: int, changed_since_checkpoint: list[int]) -> None:
        """Publish and follow from now on. The bucket is opened in the background: a switch
        starting with others, while the bucket's stream forms, is not held up by it."""
        self.cards_changed(changed_since_checkpoint)
        self.region.spawn_loop(self._run(js, replicas))

    async def _run(self, js, replicas: int) -> None:
        import nats.errors
        from nats.js.errors import KeyNotFoundError

        while not self.closed:
            try:
                self.kv = await open_bucket(js, replicas)
                try:
                    tail = await self.kv.get(TAIL_PREFIX + self.region.name)
                    self.deny_published = int(tail.value or b"0")
                except KeyNotFoundError:
                    self.deny_published = 0
                break
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("region %s: blocked-cards bucket not ready: %r", self.region.name,
                            exc)
                await asyncio.sleep(RETRY_S)
        else:
            return
        self.deny_published = min(self.deny_published, self.region.engine.state.deny_version)
        self.region.spawn_loop(routing.follow(self.kv, ">", self))
        await self._publish_loop()

    # ---- owner -------------------------------------------------------------------------------

    def cards_changed(self, cards) -> None:
        """Cards of this region whose status changed (durably): publish them."""
        self.changed.update(int(c) for c in cards)
        if self.changed:
            self.wakeup.set()

    async def _publish_loop(self) -> None:
        st = self.region.engine.state
        while not self.closed:
            # A bounded slice of the deny log at a time (a first start may find a long one):
            # the event loop answers terminals in between.
            deny_end = self.deny_published
            if len(self.changed) < PUBLISH_BATCH_MAX:
                deny_end = min(st.deny_version, self.deny_published + PUBLISH_BATCH_MAX)
                self.changed.update(st.card_index(pan) for _, pan, _ in
                                    st.deny_changes(self.deny_published, deny_end,
                                                    foreign=False))
            if not self.changed:
                self.wakeup.clear()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), PUBLISH_PERIOD_S)
                except TimeoutError:
                    pass
                continue
            try:
                await self._publish(st, deny_end)
            except Exception as exc:            # any NATS failure: publish again later
                log.warning("region %s: blocked cards not published yet: %r",
                            self.region.name, exc)
                await asyncio.sleep(RETRY_S)

    async def _publish(self, st, deny_end: int) -> None:
        cards = list(itertools.islice(self.changed, PUBLISH_BATCH_MAX))
        accounts = st.cards["account"][cards]
        statuses = st.cards["status"][cards]
        denied = (st.accounts["flags"][accounts] & HOLDER_DENIED) != 0
        pans = st.cards["pan"][cards]
        for card, pan, status, deny in zip(cards, pans.tolist(), statuses.tolist(),
                                           denied.tolist(), strict=True):
            await self.kv.put(f"{self.region.name}.{card}", encode(pan, status, deny))
            self.changed.discard(card)
            self.published += 1
        if not self.changed and deny_end > self.deny_published:
            # Every card of the log up to deny_end is in the bucket: the tail moves on.
            await self.kv.put(TAIL_PREFIX + self.region.name, str(deny_end).encode())
            self.deny_published = deny_end

    # ---- every other region ------------------------------------------------------------------

    async def entry(self, key: str, data: bytes | None) -> None:
        region = key.partition(".")[0]
        if region == self.region.name or key.startswith(TAIL_PREFIX) or data is None:
            return
        try:
            pan, status, denied = decode(data)
        except ValueError as exc:
            log.error("region %s: %s (key %s) ignored", self.region.name, exc, key)
            return
        ctx = self.region
        ctx.engine.router.block(pan, status, denied)
        if ctx.engine.state.foreign_listed(pan) != denied:
            # Appended to the journal like an operator's change; the gates may learn it
            # before it is durable: a crash re-reads the bucket and journals it again.
            ctx.door.apply(operations.foreign_deny, pan, denied, province_of_pan(pan))
            ctx.durability.submit()
            self.foreign_deny_changes += 1

    async def reread(self, kv: KeyValue) -> None:
        """Nothing: a watch that broke is made again, and gives every current value again."""

