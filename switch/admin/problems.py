"""The admin API's errors as RFC 9457 problem documents (``application/problem+json``), from
one table: the error families of switch/errors.py (and the classes that answer otherwise
than their family) to an HTTP status. The ``problems`` middleware (switch/admin/http.py)
answers every route with it; a handler raises the error, or a ``Problem`` for an answer of
its own (a 404 of a route, a 409 of a card's state)."""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from onecard.switch.admin.schema import BodyError
from onecard.switch.catalogue import ApplicationExists, CatalogueError, NoApplication
from onecard.switch.clearing.reader import DateError, FutureDate
from onecard.switch.clearing.worker import WorkerFailed
from onecard.switch.errors import AdminError, ClearingError, OnecardError, StoreError
from onecard.switch.region.catalogues import CatalogueConflict
from onecard.switch.store.pg.connect import driver_errors, one_line

log = logging.getLogger("onecard.admin")
PROBLEM: Final = "application/problem+json"
TITLES: Final[dict[int, str]] = {
    400: "Bad Request", 404: "Not Found", 409: "Conflict", 422: "Unprocessable Content",
    503: "Service Unavailable"}
STORE_RETRY_AFTER_S: Final = 5


class Problem(AdminError):
    """An answer a handler gives itself: status, title and detail as they are sent."""

    def __init__(self, status: int, title: str, detail: str, **headers: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.headers = headers


# Error class -> (status, title; None: TITLES[status]). The most specific class an error is
# an instance of answers (its method resolution order is walked). An OnecardError of none of
# these is a bug: it stays a 500 with its traceback in the log. BodyError carries its own
# status (400: not a JSON object, 422: a value).
PROBLEMS: Final[dict[type[BaseException], tuple[int, str | None]]] = {
    BodyError: (422, None),
    CatalogueError: (422, "Catalogue change refused"),
    NoApplication: (404, "Catalogue change refused"),
    ApplicationExists: (409, "Catalogue change refused"),
    CatalogueConflict: (409, "Catalogue changed elsewhere"),   # another region's change
    ClearingError: (422, None),              # the journal as it is: the message names a record
    DateError: (400, None),
    FutureDate: (422, None),                 # well formed, not begun by the cut-over
    WorkerFailed: (503, None),               # a crash or the store, not the journal: retry
    # The PostgreSQL store failing over, or this switch fenced: nothing was changed by the
    # request; a retry reaches the (new) primary. Its driver's errors answer the same.
    StoreError: (503, None),
    **{driver_error: (503, None) for driver_error in driver_errors()},
}
STORE_ERRORS: Final[tuple[type[BaseException], ...]] = (StoreError, *driver_errors())
# What the middleware turns into one.
ANSWERED: Final[tuple[type[BaseException], ...]] = (OnecardError, *driver_errors())


def problem_response(status: int, title: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"type": "about:blank", "title": title, "status": status,
                              "detail": detail}, status=status, content_type=PROBLEM,
                             headers=headers)


def problem_of(exc: BaseException) -> Problem | None:
    """The problem document ``exc`` is answered with; None for one the table does not name
    (a bug: the server's 500)."""
    if isinstance(exc, Problem):
        return exc
    entry = next((PROBLEMS[cls] for cls in type(exc).__mro__ if cls in PROBLEMS), None)
    if entry is None:
        return None
    status, title = entry
    if isinstance(exc, BodyError):
        status = exc.status
    if isinstance(exc, STORE_ERRORS):
        # libpq's first line names the host and the reason; its detail lines are noise here
        return Problem(status, title or TITLES[status], f"the store is unavailable: "
                       f"{one_line(exc)}; retry", **{"Retry-After": str(STORE_RETRY_AFTER_S)})
    return Problem(status, title or TITLES[status], str(exc))


def answer(request: web.Request, exc: BaseException) -> web.Response | None:
    """The response for ``exc`` raised by the handler of ``request``, or None."""
    problem = problem_of(exc)
    if problem is None:
        return None
    if isinstance(exc, STORE_ERRORS):
        log.warning("admin %s %s: store unavailable: %s", request.method, request.path,
                    one_line(exc))
    return problem_response(problem.status, problem.title, problem.detail, **problem.headers)
