"""Stand-in limits between regional switches (issue 15, docs/regions.md).

Every switch publishes, for the cards it issues, how much another region may approve for one
of them while it does not answer: per request and per card per day, for transit taps and venue
entries (``protocols.forward.STAND_IN_KINDS``). The limits live in the routing bucket under
``standin.<region>`` as JSON; every switch follows them and gives its core, per province code,
the limits of the region that owns it (``Router.configure_stand_in``). A region with no
published limits gets none: its cards get 91 while it does not answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated

import msgspec
import numpy as np
from msgspec import Meta

from onecard.protocols import forward
from onecard.switch.region.routing import check_region

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.js.kv import KeyValue

log = logging.getLogger("onecard.region")

Fen = Annotated[int, Meta(ge=0, le=forward.STAND_IN_FEN_MAX)]


class Limits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    per_txn_fen: Fen
    per_day_fen: Fen


def encode(limits: Limits) -> bytes:
    return msgspec.json.encode(limits)


def decode(data: bytes) -> Limits:
    """Raises ValueError for anything but two limits in range."""
    try:
        return msgspec.json.decode(data, type=Limits)
    except msgspec.ValidationError as exc:
        raise ValueError(f"stand-in limits: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ValueError(f"stand-in limits are not JSON: {exc}") from exc


async def publish(kv: KeyValue, region: str, limits: Limits) -> int:
    """Publish a region's limits (its own: a switch publishes at every start); the revision."""
    return await kv.put(forward.STAND_IN_KEY + check_region(region), encode(limits))


def arrays(owners: dict[int, str], limits: dict[str, Limits],
           local: str) -> tuple[np.ndarray, np.ndarray]:
    """Per province code, the limits of its owner (0 for this switch's own provinces, for
    provinces nobody owns and for owners that published none)."""
    per_txn = np.zeros(100, dtype=np.int64)
    per_day = np.zeros(100, dtype=np.int64)
    for province, region in owners.items():
        found = limits.get(region)
        if region != local and found is not None and 0 <= province < 100:
            per_txn[province], per_day[province] = found.per_txn_fen, found.per_day_fen
    return per_txn, per_day


class Follower:
    """Every region's published limits (routing.follow gives it the bucket's changes)."""

    def __init__(self, on_change: Callable[[dict[str, Limits]], None]) -> None:
        self.limits: dict[str, Limits] = {}
        self.on_change = on_change

    def offer(self, key: str, data: bytes | None) -> bool:
        region = key.removeprefix(forward.STAND_IN_KEY)
        if data is None:
            return self.limits.pop(region, None) is not None
        try:
            limits = decode(data)
        except ValueError as exc:
            log.error("region %s: %s; its cards keep the limits they had", region, exc)
            return False
        if self.limits.get(region) == limits:
            return False
        self.limits[region] = limits
        log.info("region %s: stand-in limits %d fen a request, %d fen a card a day", region,
                 limits.per_txn_fen, limits.per_day_fen)
        return True

    async def entry(self, key: str, data: bytes | None) -> None:
        if self.offer(key, data):
            self.on_change(dict(self.limits))

    async def reread(self, kv: KeyValue) -> None:
        from nats.js.errors import KeyNotFoundError, NoKeysError

        try:
            keys = [k for k in await kv.keys() if k.startswith(forward.STAND_IN_KEY)]
        except NoKeysError:
            keys = []
        changed = False
        for gone in set(self.limits) - {k.removeprefix(forward.STAND_IN_KEY) for k in keys}:
            changed |= self.offer(forward.STAND_IN_KEY + gone, None)
        for key in keys:
            try:
                changed |= self.offer(key, (await kv.get(key)).value)
            except KeyNotFoundError:
                changed |= self.offer(key, None)
        if changed:
            self.on_change(dict(self.limits))
