"""The admin API's clearing routes (role ``finance``; docs/admin-api.md): clear a date, its
positions, a party's clearing file."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from onecard.switch.admin.routes import Problem
from onecard.switch.clearing.cli import FutureDate, settlement_date

if TYPE_CHECKING:
    from onecard.switch.admin.operators import Operator
    from onecard.switch.admin.routes import AdminApi
    from onecard.switch.clearing.service import ClearingService


def _date(request: web.Request) -> dt.date:
    try:
        return settlement_date(request.match_info["date"])
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

    g = api.guarded
    app.router.add_post("/admin/clearing/{date}", g("finance", run))
    app.router.add_get("/admin/clearing/{date}/positions", g("finance", positions))
    app.router.add_get("/admin/clearing/{date}/files/{party}", g("finance", party_file))
