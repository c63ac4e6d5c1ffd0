from collections.abc import Mapping

import numpy as np

from onecard.core.journal import Journal
from onecard.core.state import State

TXN_DTYPE: np.dtype[np.void]

class Authoriser:
    daily_limit_fen: int
    amount_fen_max: int
    topup_fen_max: int
    cutover_s: int                       # 日切, seconds after midnight China time
    @property
    def settle_day(self) -> int: ...     # settlement date now, days since 2000-01-01
    def __init__(self, state: State, journal: Journal, *, daily_limit_fen: int = ...,
                 amount_fen_max: int = ..., fx_rates: Mapping[int, int] | None = ...) -> None: ...
    @property
    def state(self) -> State: ...
    @property
    def journal(self) -> Journal: ...
    def set_clock(self, now_us: int) -> None: ...
    def masked_name(self, card: int) -> str: ...
