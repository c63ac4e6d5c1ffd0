"""The application catalogue, one for every region (issue 15, docs/regions.md).

The catalogue (which applications exist, what they need, whose cards they accept) is the
scheme's, not a province's: every regional switch must enforce the same version. A change is
made through any switch's admin API; that switch checks it against its catalogue, publishes it
on the JetStream stream ``ONECARD_CATALOGUE`` (subject ``onecard.catalogue``) only if the
stream's last message is the last one it applied (``Nats-Expected-Last-Sequence``: two
regions changing it at once, one gets 409 and tries again), and then applies it. Every switch
follows the stream from its first message with an ordered consumer and applies each version
above its own, in order, through the same ``catalogue.change``: versions are equal everywhere,
a switch that was down catches up at its start, and the stream can be rebuilt from any switch's
``catalogue_history``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec

from onecard.switch import catalogue
from onecard.switch.errors import RegionError

if TYPE_CHECKING:
    from onecard.switch.region.context import RegionContext
    from onecard.switch.sql import SqlConnection

log = logging.getLogger("onecard.region")

STREAM = "ONECARD_CATALOGUE"
SUBJECT = "onecard.catalogue"
PUBLISH_TIMEOUT_S = 5.0


class Change(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    version: int
    action: str
    code: str
    fields: dict
    operator: str
    region: str


class CatalogueConflict(RegionError):
    """Another region changed the catalogue since this switch last applied a version."""


class CatalogueSync:
    def __init__(self, region: RegionContext) -> None:
        self.region = region
        self.lock = asyncio.Lock()          # a local change, or an applied one, at a time
        self.last_seq = 0                   # the stream's last message seen here
        self.applied = 0                    # other regions' versions applied here
        self.db: SqlConnection | None = None

    async def start(self, js, replicas: int) -> None:
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import BadRequestError

        self.js = js
        self.db = self.region.store.open_db(fence_epoch=self.region.fence_epoch)
        config = StreamConfig(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE,
                              num_replicas=replicas)
        try:
            await js.add_stream(config)
        except BadRequestError:              # made by another switch, maybe otherwise
            await js.stream_info(STREAM)
        self.sub = await js.subscribe(SUBJECT, ordered_consumer=True, cb=self._on_message)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def _db(self) -> SqlConnection:
        assert self.db is not None, "used between start and close"
        return self.db

    def version(self) -> int:
        return catalogue.version(self._db())

    async def publish(self, action: str, code: str, fields: dict, operator: str) -> int:
        """Publish a local change (checked already): the version it will be. Raises
        CatalogueConflict when another region's change came first, nats errors when the
        stream cannot be reached (the change is then not made anywhere)."""
        from nats.js.errors import APIError

        version = self.version() + 1
        change = Change(version, action, code, fields, operator, self.region.name)
        try:
            ack = await self.js.publish(
                SUBJECT, msgspec.json.encode(change), timeout=PUBLISH_TIMEOUT_S,
                headers={"Nats-Msg-Id": f"catalogue.{version}",
                         "Nats-Expected-Last-Sequence": str(self.last_seq)})
        except APIError as exc:
            if exc.err_code == 10071:        # wrong last sequence
                raise CatalogueConflict(f"the catalogue changed in another region since "
                                        f"version {version - 1}: try again") from exc
            raise
        self.last_seq = max(self.last_seq, ack.seq)
        return version

    async def _on_message(self, msg) -> None:
        seq = msg.metadata.sequence.stream
        try:
            change = msgspec.json.decode(msg.data, type=Change)
        except msgspec.MsgspecError as exc:
            log.error("region %s: catalogue message %d ignored: %s", self.region.name, seq, exc)
            self.last_seq = max(self.last_seq, seq)
            return
        async with self.lock:
            self.last_seq = max(self.last_seq, seq)
            have = self.version()
            if change.version <= have:
                return                        # this switch made it, or applied it before
            if change.version != have + 1:
                log.error("region %s: catalogue version %d from %s, this switch is at %d: "
                          "versions are missing from the stream", self.region.name,
                          change.version, change.region, have)
                return
            try:
                catalogue.change(self._db(), change.operator, change.action, change.code,
                                 change.fields)
            except catalogue.CatalogueError as exc:
                log.error("region %s: catalogue version %d from %s does not apply here: %s",
                          self.region.name, change.version, change.region, exc)
                return
            self.region.catalogue_changed(self._db())
            self.applied += 1
            log.info("region %s: catalogue version %d from region %s (%s %s)",
                     self.region.name, change.version, change.region, change.action, change.code)
