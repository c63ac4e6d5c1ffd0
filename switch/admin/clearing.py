"""The admin API's clearing routes (role ``finance``; docs/admin-api.md): clear a date, its
positions, a party's clearing file, its exceptions and their adjustments (差错调整).

What clearing raises is answered by the admin API's one table (switch/admin/problems.py):
a malformed date 400, one not begun (FutureDate) 422, a journal clearing cannot take as it is
(ClearingError, the message names the record) 422, a worker that failed (WorkerFailed) 503;
never a 500."""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from onecard.core import operations
from onecard.protocols import clearing
from onecard.protocols.journal import NONE as NO_CARD
from onecard.switch.admin import schema
from onecard.switch.admin.problems import Problem
from onecard.switch.clearing import exceptions
from onecard.switch.clearing.reader import settlement_date

if TYPE_CHECKING:
    from onecard.switch.admin.operators import Operator
    from onecard.switch.admin.routes import AdminApi
    from onecard.switch.clearing.service import ClearingService


# A party as its files are named: a role and a key of letters, digits, "_", "." or "-"
# (merchant ids, operator, province and region codes). Anything else names no file, and
# must not reach the file system (a 5,000-character name, "../" or a NUL).
PARTY = re.compile(r"[a-z]{1,16}:[A-Za-z0-9_.-]{1,64}")


def _date(request: web.Request, cutover: str, text: str | None = None) -> dt.date:
    """The route's settlement date; DateError (400) if malformed, FutureDate (422) if it has
    not begun (by the switch's cut-over, not the calendar)."""
    return settlement_date(text or request.match_info["date"], cutover)


def _party(text: str) -> str:
    role = text.partition(":")[0]
    if not PARTY.fullmatch(text) or role not in clearing.ROLE:
        raise Problem(400, "Bad Request", f"party {text[:80]!r} is not role:key (roles: "
                      f"{', '.join(clearing.ROLE)}; keys of letters, digits, _ . -, at most "
                      "64)")
    return text


def add_routes(app: web.Application, api: AdminApi, service: ClearingService) -> None:
    async def cleared(request: web.Request, write: bool):
        date = _date(request, service.cutover)
        return date, await service.run(date, write=write)

    async def run(request: web.Request, op: Operator) -> web.Response:
        date, day = await cleared(request, True)
        api.audit(op, "clearing.run", date.isoformat(),
                  {"records": day.records, "parties": len(day.positions)})
        return web.json_response(body=msgspec.json.encode(day))

    async def positions(request: web.Request, op: Operator) -> web.Response:
        _, day = await cleared(request, False)
        return web.json_response(body=msgspec.json.encode(day))

    async def party_file(request: web.Request, op: Operator) -> web.Response:
        date = _date(request, service.cutover)
        party = _party(request.match_info["party"])
        path = service.file(date, party)
        if path is None:
            why = ("that party has no line on the date" if service.cleared(date) else
                   f"clear the date first (POST /admin/clearing/{date})")
            raise Problem(404, "Not Found", f"no clearing file of {party} for {date}: {why}")
        return web.Response(body=path.read_bytes(), content_type="text/csv", charset="ascii")

    async def listed(request: web.Request, op: Operator) -> web.Response:
        status = request.query.get("status")
        if status not in (None, "open", "resolved"):
            raise Problem(400, "Bad Request", "status must be open or resolved")
        found = await service.exceptions(_date(request, service.cutover))
        return web.json_response(body=msgspec.json.encode(
            [e for e in found if status is None or e.status == status]))

    async def adjusted(request: web.Request, op: Operator) -> web.Response:
        found = await service.exceptions(_date(request, service.cutover))
        return web.json_response(body=msgspec.json.encode(
            [e for e in found if e.adjustment is not None]))

    adjust = _adjust_handler(api, service)

    g = api.guarded
    app.router.add_post("/admin/clearing/{date}", g("finance", run))
    app.router.add_get("/admin/clearing/{date}/positions", g("finance", positions))
    app.router.add_get("/admin/clearing/{date}/files/{party}", g("finance", party_file))
    app.router.add_get("/admin/clearing/{date}/exceptions", g("finance", listed))
    app.router.add_get("/admin/clearing/{date}/adjustments", g("finance", adjusted))
    app.router.add_post("/admin/clearing/exceptions/{id}/adjustment", g("finance", adjust))


def _check_adjustable(e: exceptions.Exception_ | None, ident: str, date: dt.date,
                      amount_fen: int, n_terminals: int) -> exceptions.Exception_:
    """The exception an adjustment may resolve, or the problem document saying why not."""
    if e is None:
        raise Problem(404, "Not Found", f"no exception {ident} (GET "
                      f"/admin/clearing/{date}/exceptions lists them)")
    if e.adjustment is not None:
        raise Problem(409, "Conflict", f"exception {ident} was resolved by journal "
                      f"record {e.adjustment.record_no}")
    if e.card_idx < 0 and amount_fen:
        raise Problem(422, "Unprocessable Content", f"exception {ident} names no card "
                      "the switch knows: there is no issuer to move money with (an "
                      "adjustment of 0 fen acknowledges it)")
    if not 0 <= e.terminal_idx < n_terminals:
        # an adjustment is journaled against the exception's terminal
        raise Problem(422, "Unprocessable Content", f"exception {ident} names no "
                      "terminal the switch knows: it cannot be adjusted here (what "
                      f"it moved is held by {clearing.SUSPENSE})")
    return e


def _adjust_handler(api: AdminApi, service: ClearingService):
    """POST /admin/clearing/exceptions/{id}/adjustment: an ADJUSTMENT record resolves it."""
    async def adjust(request: web.Request, op: Operator) -> web.Response:
        ident = request.match_info["id"]
        try:
            date, _ = exceptions.parse_id(ident)
        except ValueError as exc:
            raise Problem(404, "Not Found", str(exc)) from None
        _date(request, service.cutover, date.isoformat())
        body = await api.body(request, schema.Adjust)
        limit = api.switch.config.limits.amount_fen_max
        if body.amount_fen > limit:
            raise Problem(422, "Unprocessable Content", f"amount_fen must be an integer from 0 "
                          f"to {limit} (limits.amount_fen_max)")
        async with service.adjusting:
            e = _check_adjustable(
                next((x for x in await service.exceptions(date) if x.id == ident), None),
                ident, date, body.amount_fen, api.switch.state.n_terminals)
            no = api.switch.door.apply(operations.adjust, e.terminal_idx, e.seq,
                                       e.card_idx if e.card_idx >= 0 else NO_CARD,
                                       body.amount_fen,
                                       exception=clearing.EXCEPTION[e.kind],
                                       ref=e.ref & exceptions.REF_MASK,
                                       direction=clearing.DIRECTIONS[body.direction],
                                       operator=api.ops.index(op))
            await api.durable(no)
        api.audit(op, "clearing.adjust", ident, {"amount_fen": body.amount_fen,
                                                 "direction": body.direction,
                                                 "card": e.card, "note": body.note}, no)
        # as the journal now says it (exceptions.adjustments), without reading it all again
        made = exceptions.Adjustment(
            record_no=no, amount_fen=body.amount_fen, direction=body.direction,
            operator=api.ops.index(op),
            date=clearing.day_date(api.switch.engine.authoriser.settle_day).isoformat())
        resolved = msgspec.structs.replace(e, status="resolved", adjustment=made)
        return web.json_response(body=msgspec.json.encode(resolved), status=201)

    return adjust
