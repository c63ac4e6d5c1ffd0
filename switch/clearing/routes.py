"""The admin API's clearing routes (role ``finance``; docs/admin-api.md): clear a date, its
positions, a party's clearing file, its exceptions and their adjustments (差错调整)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from onecard.core import operations
from onecard.protocols import clearing
from onecard.protocols.journal import NONE as NO_CARD
from onecard.switch.admin import schema
from onecard.switch.admin.routes import Problem
from onecard.switch.clearing import exceptions
from onecard.switch.clearing.cli import FutureDate, settlement_date

if TYPE_CHECKING:
    from onecard.switch.admin.operators import Operator
    from onecard.switch.admin.routes import AdminApi
    from onecard.switch.clearing.service import ClearingService


def _date(request: web.Request, text: str | None = None) -> dt.date:
    try:
        return settlement_date(text or request.match_info["date"])
    except FutureDate as exc:
        raise Problem(422, "Unprocessable Content", str(exc)) from None
    except ValueError as exc:
        raise Problem(400, "Bad Request", str(exc)) from None


def add_routes(app: web.Application, api: AdminApi, service: ClearingService) -> None:
    async def cleared(request: web.Request, write: bool):
        date = _date(request)
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
        date = _date(request)
        path = service.file(date, request.match_info["party"])
        if path is None:
            raise Problem(404, "Not Found", f"no clearing file of {request.match_info['party']} "
                          f"for {date}: clear the date first (POST /admin/clearing/{date})")
        return web.Response(body=path.read_bytes(), content_type="text/csv", charset="ascii")

    async def listed(request: web.Request, op: Operator) -> web.Response:
        status = request.query.get("status")
        if status not in (None, "open", "resolved"):
            raise Problem(400, "Bad Request", "status must be open or resolved")
        found = await service.exceptions(_date(request))
        return web.json_response(body=msgspec.json.encode(
            [e for e in found if status is None or e.status == status]))

    async def adjusted(request: web.Request, op: Operator) -> web.Response:
        found = await service.exceptions(_date(request))
        return web.json_response(body=msgspec.json.encode(
            [e for e in found if e.adjustment is not None]))

    async def adjust(request: web.Request, op: Operator) -> web.Response:
        ident = request.match_info["id"]
        try:
            date, _ = exceptions.parse_id(ident)
        except ValueError as exc:
            raise Problem(404, "Not Found", str(exc)) from None
        _date(request, date.isoformat())
        body = await api.body(request, schema.Adjust)
        limit = api.switch.config.limits.amount_fen_max
        if body.amount_fen > limit:
            raise Problem(422, "Unprocessable Content", f"amount_fen must be an integer from 0 "
                          f"to {limit} (limits.amount_fen_max)")
        async with service.adjusting:
            e = next((x for x in await service.exceptions(date) if x.id == ident), None)
            if e is None:
                raise Problem(404, "Not Found", f"no exception {ident} (GET "
                              f"/admin/clearing/{date}/exceptions lists them)")
            if e.adjustment is not None:
                raise Problem(409, "Conflict", f"exception {ident} was resolved by journal "
                              f"record {e.adjustment.record_no}")
            if e.card_idx < 0 and body.amount_fen:
                raise Problem(422, "Unprocessable Content", f"exception {ident} names no card "
                              "the switch knows: there is no issuer to move money with (an "
                              "adjustment of 0 fen acknowledges it)")
            api.switch.engine.tick()
            no = operations.adjust(api.switch.engine.authoriser, e.terminal_idx, e.seq,
                                   e.card_idx if e.card_idx >= 0 else NO_CARD,
                                   body.amount_fen,
                                   exception=clearing.EXCEPTION[e.kind], ref=e.ref,
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

    g = api.guarded
    app.router.add_post("/admin/clearing/{date}", g("finance", run))
    app.router.add_get("/admin/clearing/{date}/positions", g("finance", positions))
    app.router.add_get("/admin/clearing/{date}/files/{party}", g("finance", party_file))
    app.router.add_get("/admin/clearing/{date}/exceptions", g("finance", listed))
    app.router.add_get("/admin/clearing/{date}/adjustments", g("finance", adjusted))
    app.router.add_post("/admin/clearing/exceptions/{id}/adjustment", g("finance", adjust))
