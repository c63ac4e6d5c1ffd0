import asyncio
from collections import deque
from typing import Any

from typing_extensions import Buffer

from onecard.core.engine import Engine

FULL_READ_BYTES: int

class Gate:
    admitting: bool
    iteration_max_s: float

class Conn:
    __slots__ = ("_buf", "authenticated", "closing", "fd", "forwarding", "intake", "last_rx",
                 "partial_since", "paused", "peer", "peer_host", "transport", "waiting_need")
    intake: Any
    @property
    def proto(self) -> int: ...
    transport: asyncio.Transport | None
    _buf: bytearray
    closing: bool
    paused: bool
    forwarding: bool
    authenticated: bool
    last_rx: float
    partial_since: float
    waiting_need: int
    fd: int
    peer: Any
    peer_host: str | None
    def __init__(self, intake: Any, proto: int) -> None: ...
    def data_received(self, data: Buffer) -> None: ...
    def ran(self, data: Buffer, held: int, result: tuple[int, bytes, int, bool], *,
            relay: bool = ...) -> None: ...

class Replies:
    committer: Any
    durable_no: int
    waiting_batches_max: int
    submit_soon: bool
    iteration_start: float
    record_waiters: list[tuple[int, asyncio.Future[None]]]
    loop: asyncio.AbstractEventLoop
    def __init__(self, engine: Engine, committer: Any, durable_no: int,
                 waiting_batches_max: int, on_durable: Any) -> None: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def waiting(self) -> deque[tuple[int, Conn, bytes, int, bool]]: ...
    @property
    def paused(self) -> set[Conn]: ...
    def deliver(self, conn: Conn, replies: bytes, batch: int, close: bool) -> None: ...
    def released(self, end_no: int) -> None: ...
    def submit(self) -> None: ...
