"""What a regional switch's link and its parts (advices, blocks, catalogues) are given of the
switch: the core, durability, the operator door and the store, never the switch itself, so
nothing in ``region/`` imports the server or the link back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from onecard.core.engine import Engine
from onecard.switch.durability import Durability, OperatorDoor
from onecard.switch.security.keystore import DataKeys
from onecard.switch.store.backend import Store


@dataclass
class RegionContext:
    name: str                                   # this switch's region
    engine: Engine
    durability: Durability
    door: OperatorDoor
    store: Store
    keys: DataKeys                              # advices resent from the journal are opened
    since_no: int                               # the newest checkpoint's: the journal tail
    fence_epoch: int | None                     # PostgreSQL: the lease the switch writes under
    catalogue_changed: Callable[[Any], None]    # a new catalogue version is in the store
    loops: set[asyncio.Task] = field(default_factory=set)

    def spawn_loop(self, coro: Coroutine) -> asyncio.Task:
        """A task that runs as long as the link (cancelled at stop)."""
        task = asyncio.create_task(coro)
        self.loops.add(task)
        return task
