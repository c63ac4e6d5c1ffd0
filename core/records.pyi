from typing import Final

RECORD_BYTES: Final[int]
LAYOUT: Final[dict[str, dict[str, tuple[int, int]]]]
