"""Journal records enciphered under an earlier data key, as the core replays them.

A record's card number is enciphered under the journal key of the data key that was current
when it was written (``keystore.DataKeys.journal_key_at``); records are never rewritten, so
after ``onecard keys rotate-dek`` the journal holds several generations. The core holds one
journal key (``State.set_journal_key``, the current one), so replay is handed a copy of each
older row with those numbers re-enciphered under the current key: the fields the core
deciphers (``core/ledger.pyx``), under the conditions it deciphers them in:

- CARD_ADMIN ``pan`` (tweak: the record's card and account);
- FORWARDED ``issuer_record_no`` of a stand-in approval (origin STAND_IN, rc 00; tweak none);
- FOREIGN_DENY ``pan`` (tweak none).

Only rows before the current key's first record need it, and in them only these kinds (few:
an operator's actions and another region's cards), so a start after a rotation pays for
nothing else.
"""

from __future__ import annotations

import numpy as np

from onecard.core import crypto
from onecard.core.state import KIND_CARD_ADMIN, KIND_FOREIGN_DENY, KIND_FORWARDED
from onecard.protocols import forward, journal_codec
from onecard.protocols.codes import CODE_INDEX
from onecard.switch.security.keystore import DataKeys

NONE32 = 0xFFFFFFFF
STAND_IN = forward.ORIGIN["STAND_IN"]
APPROVED = CODE_INDEX["00"]
KINDS = (KIND_CARD_ADMIN, KIND_FORWARDED, KIND_FOREIGN_DENY)


def current(keys: DataKeys, blob: bytes, first_no: int) -> bytes:
    """Records (the current format) numbered from ``first_no``, with the card numbers that
    earlier journal keys enciphered enciphered under the current one instead; ``blob``
    itself when none is."""
    if not keys.earlier or first_no >= keys.from_no:
        return blob
    recs = journal_codec.unpack(blob)
    older = min(len(recs), keys.from_no - first_no)
    hits = np.flatnonzero(np.isin(recs["kind"][:older], KINDS))
    if not len(hits):
        return blob
    out = recs.copy()
    views = {kind: journal_codec.view(out, layout) for kind, layout in (
        (KIND_CARD_ADMIN, "card_admin"), (KIND_FORWARDED, "forwarded"),
        (KIND_FOREIGN_DENY, "foreign_deny"))}
    for i in hits:
        kind = int(out["kind"][i])
        _recipher(views[kind], int(i), kind, keys.journal_key_at(first_no + int(i)),
                  keys.journal_key)
    return out.tobytes()


def _recipher(rec: np.ndarray, i: int, kind: int, old: bytes, new: bytes) -> None:
    """One record's enciphered number (if it has one) from ``old`` to ``new``, in place."""
    if kind == KIND_CARD_ADMIN:
        field, card, account = "pan", int(rec["card"][i]), int(rec["account"][i])
    elif kind == KIND_FOREIGN_DENY:
        field, card, account = "pan", NONE32, NONE32
    elif rec["origin"][i] == STAND_IN and rec["rc"][i] == APPROVED:
        field, card, account = "issuer_record_no", NONE32, NONE32
    else:
        return                       # a number in clear (an issuer's record number)
    pan = crypto.pan_crypt(old, int(rec[field][i]), card, account, decrypt=True)
    rec[field][i] = crypto.pan_crypt(new, pan, card, account)
