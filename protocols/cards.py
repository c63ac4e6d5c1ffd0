"""Card numbers (PANs) as the scheme issues them: the Luhn check digit (ISO/IEC 7812-1) that
ends every number, for numbers made anywhere (the demo data set, a card the admin API
replaces or issues as an electronic card)."""

from __future__ import annotations


def luhn_digit(digits: str) -> str:
    """The check digit that makes ``digits`` + it pass the Luhn test."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)
