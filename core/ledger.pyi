from typing import Final

from onecard.core.state import State

CARD_NEW: Final[int]
CARD_CHANGE: Final[int]

def apply_records(st: State, data: bytes, first_no: int, skip_before: int = 0) -> int: ...
