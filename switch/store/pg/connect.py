"""Connections to the PostgreSQL store, and the one-line errors a command prints for them.

psycopg 3 is optional (``pip install 'onecard[postgresql]'``): the embedded SQLite store must not
need it, so it is imported here, when a command first connects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from onecard.switch.errors import StoreError

if TYPE_CHECKING:
    import psycopg

# libpq waits this long for each host of the DSN before trying the next (a DSN may name
# several): an address that drops packets must not hang a command for minutes.
CONNECT_TIMEOUT_S: Final = 10
APPLICATION_NAME: Final = "onecard"


class PgError(StoreError):
    """A command must stop: the message is one line, fit to print as it is."""


def _psycopg():
    try:
        import psycopg
    except ImportError as exc:
        raise PgError("the PostgreSQL store needs psycopg 3: pip install "
                      "'psycopg[binary]>=3.1' (or the onecard[postgresql] extra)") from exc
    return psycopg


def one_line(exc: BaseException) -> str:
    """libpq's message without its continuation lines (its detail/hint, the connection's
    address again): the first line names the host and the reason."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection:
    """A connection, or PgError saying in one line why not (unreachable, refused, wrong
    password, no such database)."""
    assert dsn, "connect: empty DSN"
    psycopg = _psycopg()
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S,
                               application_name=APPLICATION_NAME)
    except psycopg.Error as exc:
        raise PgError(f"cannot connect to PostgreSQL: {one_line(exc)}") from exc
    except ValueError as exc:     # psycopg's own check of the DSN's syntax
        raise PgError(f"PostgreSQL DSN: {exc}") from exc


def driver_errors() -> tuple[type[BaseException], ...]:
    """Errors a command turns into one line after it has connected (none without psycopg:
    then nothing connected)."""
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)


def store_errors() -> tuple[type[BaseException], ...]:
    """PgError and the driver's errors: what a store operation turns into one line."""
    return (PgError, *driver_errors())


def one_row(cur: psycopg.Cursor[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The row of a statement that always returns one (SHOW, an aggregate without GROUP BY,
    an UPDATE ... RETURNING of a row known to exist)."""
    row = cur.fetchone()
    assert row is not None, "one_row: the statement returned no row"
    return row
