"""What the reference-table queries need of a connection: the slice of ``sqlite3``'s API that
both stores answer (``sqlite3.Connection`` itself, and ``store/pg/db.py``'s ``Db`` over
PostgreSQL). Modules below the store annotate with these, so they name neither backend."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol


class SqlCursor(Protocol):
    """The rows of one statement: tuples, iterated or fetched."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class SqlConnection(Protocol):
    """``execute``/``executemany``/``close`` with ``?`` placeholders, in autocommit (callers
    begin and commit explicitly)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> SqlCursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> SqlCursor: ...

    def close(self) -> None: ...
