"""Response codes (SPEC §3.1), shared by ISO 8583 field 39 and the native protocol's ``rc``.

The index of a code in :data:`CODES` is how the compiled core stores it (one byte), so the
order is part of the journal format: append new codes, never reorder.
"""

from typing import Final

CODES: Final[tuple[tuple[str, str], ...]] = (
    ("00", "approved"),
    ("03", "invalid merchant / unknown terminal"),
    ("05", "do not honour (card frozen)"),
    ("12", "invalid transaction"),
    ("13", "invalid amount or currency"),
    ("14", "invalid card (unknown, cancelled or replaced)"),
    ("25", "original transaction not found (reversal details differ)"),
    ("30", "format error"),
    ("33", "expired card"),
    ("41", "lost card"),
    ("51", "insufficient funds"),
    ("57", "not permitted to cardholder (function not loaded on the card)"),
    ("58", "not permitted to terminal"),
    ("61", "exceeds daily limit"),
    ("62", "restricted card (not accepted in this region)"),
    ("91", "issuer unavailable"),
    ("94", "duplicate transmission"),
    ("96", "system malfunction"),
    ("A0", "MAC failure (or terminal not signed on)"),
    ("M1", "remote medical treatment without a filing (备案): settle in cash"),
    ("77", "settlement date changed (日切): settle the batch and sign on again"),
    ("95", "reconcile error: no unbalanced batch of this number to upload (0320)"),
    ("80", "invalid date: a settlement date that has not begun"),
)

CODE_INDEX: Final[dict[str, int]] = {code: i for i, (code, _) in enumerate(CODES)}
MEANING: Final[dict[str, str]] = dict(CODES)
