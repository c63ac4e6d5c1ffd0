from collections.abc import Mapping
from typing import Any

import numpy as np
from typing_extensions import Buffer

from onecard.core.authorise import Authoriser
from onecard.core.journal import Journal
from onecard.core.metrics import CoreMetrics
from onecard.core.state import State

ISO8583: int
NATIVE: int
REFUSE_OVERLOAD: int
REFUSE_JOURNAL: int
REFUSE_REASONS: tuple[str, ...]

class Engine:
    clock_offset_us: int
    clock_us: int
    def __init__(self, state: State, *, next_record_no: int = ..., daily_limit_fen: int = ...,
                 amount_fen_max: int = ..., iso_frame_bytes_max: int = ...,
                 native_frame_bytes_max: int = ..., native_batch_max: int = ...,
                 fx_rates: Mapping[int, int] | None = ...) -> None: ...
    @property
    def state(self) -> State: ...
    @property
    def journal(self) -> Journal: ...
    @property
    def authoriser(self) -> Authoriser: ...
    @property
    def metrics(self) -> CoreMetrics: ...
    @property
    def router(self) -> Any: ...
    @property
    def shed(self) -> np.ndarray: ...
    @property
    def authenticated(self) -> bool: ...
    def tick(self) -> None: ...
    def process(self, proto: int, data: Buffer) -> tuple[int, bytes, int, bool]: ...
    def refuse(self, proto: int, data: Buffer, reason: int) -> tuple[int, bytes, int, bool]: ...
    def serve_forwarded(self, data: Buffer) -> tuple[bytes, int]: ...
