"""The idempotency horizon's segment chain, and the label each checkpoint array is sealed
under: what both stores' checkpoint writers (``snapshots.py`` in files, ``pg/checkpoints.py``
in PostgreSQL) and the loader agree on. Its own module so that neither writer imports the
other."""

from __future__ import annotations

import numpy as np


def label(upto: int, name: str) -> str:
    """The associated data naming one array of one checkpoint (in a file or a bytea); an
    array carried from an earlier checkpoint (``NAME@UPTO``) opens as that one's."""
    if "@" in name:
        name, _, carried = name.partition("@")
        upto = int(carried)
    return f"checkpoint {upto:016d} {name}"


# The arrays of a horizon segment, and what a snapshot holds that is not written (the mark a
# checkpoint confirms the horizon with once it is written).
SEGMENT = ("horizon_rows", "horizon_rows_at")
NOT_WRITTEN = ("horizon_mark",)


def horizon_chain(arrays: dict[str, np.ndarray], upto: int,
                  previous: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The segments (checkpoint upto, newest date in it) whose rows, loaded oldest first,
    make the horizon of this checkpoint: the earlier ones still holding a date it holds
    (none if its own segment holds every row), then its own if it has rows."""
    if "horizon_gens" not in arrays:
        return []
    held = arrays["horizon_gens"][:, 0]
    whole = "horizon_mark" not in arrays or bool(arrays["horizon_mark"][1])
    oldest = int(held.min()) if len(held) else None
    chain = [] if whole or oldest is None else [(u, d) for u, d in previous if d >= oldest]
    runs = arrays.get("horizon_rows_at")
    if runs is not None and len(runs):
        chain.append((upto, int(runs[:, 0].max())))
    return chain


def carried_name(base: str, upto: int) -> str:
    """The name an array of checkpoint ``upto`` has in a later checkpoint that carries it."""
    return f"{base}@{upto}"


def chain_of(upto: int, arrays: dict[str, np.ndarray]) -> list[tuple[int, int]]:
    """The chain a loaded checkpoint was written with (one written whole: its own)."""
    if "horizon_chain" in arrays:
        return [(int(u), int(d)) for u, d in arrays["horizon_chain"]]
    return horizon_chain(arrays, upto, [])
