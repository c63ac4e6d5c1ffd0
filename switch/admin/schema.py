"""The admin API's request bodies, declared once as msgspec Structs with their bounds, and
the one decoder that turns a body into one of them or into a refusal naming the field.

msgspec decodes straight into the declared types, so a 5,000-digit integer, a list nested
100,000 deep, a float or a bool where an integer belongs, an unknown key, or a string with a
control character is refused where it stands (``at $.items[3].card``) without building the
value first. Card numbers are ASCII digits only: ``'²'.isdigit()`` is true in Python, and
``int('١٢')`` reads Arabic-Indic digits as a number.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, TypeVar

import msgspec
import numpy as np
from msgspec import UNSET, Meta, UnsetType

from onecard.switch.admin.disbursements import MAX_ITEM_FEN
from onecard.switch.catalogue import Functions, LimitFen
from onecard.switch.errors import AdminError

# No C0/C1 control characters (NUL included), no line or paragraph separators, no
# bidirectional overrides (they make a name display as something else), no lone surrogates
# (SQLite cannot store them). \A...\Z: '$' would also match before a final newline.
TEXT_PATTERN = r"\A[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]*\Z"
CARD_PATTERN = r"\A[0-9]{12,19}\Z"
APP_CODE_PATTERN = r"\A[A-Z][A-Z0-9-]{1,23}\Z"
PERIOD_PATTERN = r"\A[0-9]{4}-?[0-9]{2}\Z"
CARD_RE = re.compile(CARD_PATTERN)
DESCRIBED = {      # msgspec quotes a pattern in its error; operators get what it means
    TEXT_PATTERN: "without control characters",
    CARD_PATTERN: "of 12-19 ASCII digits",
    APP_CODE_PATTERN: "of 2-24 capital letters, digits and '-', starting with a letter",
    PERIOD_PATTERN: "YYYY-MM",
}

Name = Annotated[str, Meta(min_length=1, max_length=80, pattern=TEXT_PATTERN)]
Word = Annotated[str, Meta(min_length=1, max_length=40, pattern=TEXT_PATTERN)]
Scope = Annotated[str, Meta(min_length=1, max_length=400, pattern=TEXT_PATTERN)]
CardText = Annotated[str, Meta(pattern=CARD_PATTERN)]
# As a JSON number too (older scripts send one), within what msgspec bounds (int64): a
# 19-digit number above that must come as a string, as the API documents it.
CardNumber = Annotated[int, Meta(ge=10**11, le=2**63 - 1)]
Card = CardText | CardNumber
Period = Annotated[str, Meta(pattern=PERIOD_PATTERN)] | Annotated[int, Meta(ge=0, le=999_999)]


class CatalogueAdd(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    code: Annotated[str, Meta(pattern=APP_CODE_PATTERN)]
    name_zh: Name
    name_en: Name
    domain: Word
    scope: Scope
    functions: Functions = 0
    daily_limit_fen: LimitFen = 0


class CatalogueChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Only the keys sent are changed (unsent ones stay UNSET and are left out)."""

    name_zh: Name | UnsetType = UNSET
    name_en: Name | UnsetType = UNSET
    scope: Scope | UnsetType = UNSET
    daily_limit_fen: LimitFen | UnsetType = UNSET
    active: bool | UnsetType = UNSET


class Bank(msgspec.Struct, forbid_unknown_fields=True):
    bank: Annotated[str, Meta(max_length=40, pattern=TEXT_PATTERN)]


class TopUp(msgspec.Struct, forbid_unknown_fields=True):
    amount_fen: Annotated[int, Meta(ge=1)]     # the upper bound is configured (limits)


class Adjust(msgspec.Struct, forbid_unknown_fields=True):
    """差错调整 of a clearing exception: fen between the card's issuer and the acquirer."""
    amount_fen: Annotated[int, Meta(ge=0)]      # the upper bound is configured (limits)
    direction: Literal["acquirer_owed", "acquirer_owes"]
    note: Annotated[str, Meta(max_length=200, pattern=TEXT_PATTERN)] = ""


class Filing(msgspec.Struct, forbid_unknown_fields=True):
    card: Card
    province: Annotated[int, Meta(ge=0, le=99)]


# A batch's items are decoded one by one (items_arrays), in the worker thread for a large
# batch: msgspec's decoder is C and gives the event loop no turn until it returns, so one
# call over 100,000 items (with a regex per card number) held the loop for 50-250 ms; between
# two items' calls the loop gets the GIL back.
class Item(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    card: Card
    amount_fen: Annotated[int, Meta(ge=1, le=MAX_ITEM_FEN)]


class Disbursement(msgspec.Struct, forbid_unknown_fields=True):
    programme: Word
    period: Period
    items: msgspec.Raw               # a non-empty list of Item: split_items, items_arrays


class BodyError(AdminError, ValueError):
    """A body refused: ``status`` 400 (not a JSON object) or 422 (a value); the message
    names the field."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


Body = TypeVar("Body", bound=msgspec.Struct)
_DECODERS: dict[type, msgspec.json.Decoder] = {}


def explain(exc: msgspec.ValidationError, prefix: str = "") -> str:
    """msgspec's message with the field first: ``items[3].card: Expected `str` of 12-19
    ASCII digits``; ``prefix`` is where the decoded value sits in the body."""
    text = str(exc)
    for pattern, meaning in DESCRIBED.items():
        text = text.replace(f"matching regex {pattern!r}", meaning)
    message, sep, at = text.rpartition(" - at `$")
    if not sep:
        return f"{prefix}: {text}" if prefix else text
    return f"{(prefix + at.rstrip('`')).lstrip('.')}: {message}"


def _converted(decoder: msgspec.json.Decoder, raw: bytes, where: str = ""):
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise BodyError(422, explain(exc, where)) from None
    except msgspec.DecodeError as exc:
        raise BodyError(400, f"body is not JSON: {exc}") from None
    except RecursionError:
        raise BodyError(400, f"{where or 'body'}: nested too deeply") from None


def decode(raw: bytes, kind: type[Body]) -> Body:
    """The body as ``kind``, or BodyError. Pure: safe to run off the event loop."""
    if not raw.lstrip(b" \t\r\n").startswith(b"{"):
        raise BodyError(400, "body must be a JSON object")
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS[kind] = msgspec.json.Decoder(kind)
    return _converted(decoder, raw)


_ITEM_LIST = msgspec.json.Decoder(list[msgspec.Raw])
_ITEM = msgspec.json.Decoder(Item)
_ITEMS = msgspec.json.Decoder(list[Item])
ITEMS_A_CALL = 1000


def split_items(items: msgspec.Raw) -> list[msgspec.Raw]:
    """A batch's items, each still undecoded (scanning them builds no values)."""
    rows = _converted(_ITEM_LIST, items, "items")
    if not rows:
        raise BodyError(422, "items: a non-empty list of {card, amount_fen}")
    return rows


def items_arrays(rows: list[msgspec.Raw]) -> tuple[np.ndarray, np.ndarray]:
    """Card numbers and amounts of a batch, decoded ITEMS_A_CALL items at a time (each call
    holds the GIL for about a millisecond); a refusal names the first bad item."""
    cards: list[int] = []
    fen: list[int] = []
    for start in range(0, len(rows), ITEMS_A_CALL):
        chunk = rows[start:start + ITEMS_A_CALL]
        try:
            items = _ITEMS.decode(b"[" + b",".join(chunk) + b"]")
        except (msgspec.ValidationError, RecursionError):
            for i, row in enumerate(chunk):          # which one, by its index in the body
                _converted(_ITEM, row, f"items[{start + i}]")
            raise
        cards += [int(item.card) for item in items]
        fen += [item.amount_fen for item in items]
    return np.array(cards, dtype=np.uint64), np.array(fen, dtype=np.int64)


def valid_card_path(pan: str) -> bool:
    """A card number in a URL path: ASCII digits only."""
    return CARD_RE.fullmatch(pan) is not None
