"""One family of errors: what the switch and its commands refuse or fail at, as one line.

Every exception class defined under ``onecard.switch`` derives from ``OnecardError``
(tests/test_errors.py walks the package to keep it so). Its message is one line an operator
can act on, and ``exit_status`` is what ``onecard`` exits with when one reaches
``cli.main``: 2 for a usage or operator error (a refused request, a configuration to fix),
1 for an operation that ran and failed. ``cli.main`` catches the base once, so a new error
class is a line on stderr, never a traceback; anything else that escapes is a bug and stays
a traceback. The admin API answers the same classes as problem documents from one table
(switch/admin/problems.py).

The families, each for what the operator has to look at:

- ``ConfigError``: the configuration (a key, a TLS file, an address to listen on);
- ``DataSetError``: the data directory or data set (missing, busy, full, a backup of it);
- ``StoreError``: the store (PostgreSQL unreachable, a commit refused);
- ``KeysError``: the data set's keys (a key-encryption key that is wrong, a rotation);
- ``RegionError``: the region (its link, its routing table, a split);
- ``ClearingError``: clearing a settlement date (exit status 1: the journal as it is);
- ``AdminError``: a request to the admin API refused (exit status 1).

Most classes live in their modules as subclasses of a family; the ones here are those more
than one module raises or catches. This module imports nothing of onecard: every floor of the
switch may import it.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_USAGE = 2        # refused as asked, or a configuration or data set to fix first
EXIT_FAILED = 1       # ran and failed (the message says what failed)


class OnecardError(Exception):
    """An error with a one-line message for the operator and the exit status for it."""

    exit_status: ClassVar[int] = EXIT_USAGE


# ---- families -----------------------------------------------------------------------------

class ConfigError(OnecardError):
    """Start-up must stop: the message names the file and the key."""


class DataSetError(OnecardError):
    """The data directory or the data set cannot be used as asked; the message says which."""


class StoreError(OnecardError):
    """The store cannot take or give what was asked now (unreachable, fenced, refused)."""


class KeysError(OnecardError):
    """The data set's keys cannot be opened or changed as asked (not ``KeyError``: a lookup's
    missing key is another thing)."""


class RegionError(OnecardError):
    """The region cannot do what was asked: its link, its routing table, a split."""


class ClearingError(OnecardError):
    """The journal or the reference data cannot be cleared as they are (the message says
    which record or table)."""

    exit_status: ClassVar[int] = EXIT_FAILED


class AdminError(OnecardError):
    """The switch refused a request (the admin API's problem body), or it could not be made:
    the message is shown as is."""

    exit_status: ClassVar[int] = EXIT_FAILED


# ---- members more than one module shares ---------------------------------------------------

class ListenError(ConfigError):
    """A listener could not be opened; the message says which and why (and the setting that
    moves it)."""


class DataDirBusy(DataSetError):
    """Another process holds the data directory's lock (one switch per data directory)."""


class NoDataSet(DataSetError, FileNotFoundError):
    """No data set (or no checkpoint of one) where it was looked for. Still a
    FileNotFoundError: callers that treat a missing data set as a missing file keep doing
    so."""


class CommitFailed(StoreError):
    """The store refused the commit: nothing after this can be made durable by this switch
    (the PostgreSQL committer; the simulator's node, bench/sim)."""
