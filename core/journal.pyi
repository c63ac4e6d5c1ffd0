from typing import Final

from onecard.protocols.journal_codec import RECORD_DTYPE as RECORD_DTYPE
from onecard.protocols.journal_codec import unpack as unpack

FORMAT: Final[int]
NONE: Final[int]

class Journal:
    next_no: int
    def __init__(self, next_no: int = 0) -> None: ...
    @property
    def pending(self) -> int: ...
    def take(self) -> tuple[int, bytes]: ...
    def extend_for_test(self, data: bytes) -> None: ...

__all__ = ["FORMAT", "NONE", "RECORD_DTYPE", "Journal", "unpack"]
