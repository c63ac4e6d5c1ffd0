"""HTTP on the switch's event loop (aiohttp): Prometheus ``/metrics``, ``/healthz``,
``/readyz``, the public ``/catalogue`` and the admin API (switch/admin/routes.py).

Errors are RFC 9457 problem documents (``application/problem+json``): aiohttp's own, and
every error of the switch's family a handler raises, from one table (switch/admin/problems.py).
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from onecard.switch import __version__
from onecard.switch.admin.guard import GuardCollector
from onecard.switch.admin.operators import Operators
from onecard.switch.admin.problems import ANSWERED, answer, problem_response
from onecard.switch.admin.routes import AdminApi
from onecard.switch.errors import ListenError
from onecard.switch.metrics import registry_for
from onecard.switch.server import PROTOCOL_NAMES, Switch
from onecard.switch.tls import server_context


@web.middleware
async def problems(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(exc.status, exc.reason,
                                f"{request.method} {request.path}: {exc.reason}")
    except ANSWERED as exc:
        response = answer(request, exc)
        if response is None:
            raise                        # an error no table names: a bug, aiohttp's 500
        return response


def make_app(switch: Switch, operators: Operators | None = None) -> web.Application:
    # Bodies are read into memory: aiohttp refuses (413) past this, before parsing anything.
    app = web.Application(middlewares=[problems],
                          client_max_size=switch.config.admin.body_limit_bytes)
    registry = registry_for(switch)
    if operators is not None:
        api = AdminApi(switch, operators)
        api.routes(app)
        from onecard.switch.admin import clearing as clearing_routes

        clearing_routes.add_routes(app, api, switch.clearing)
        registry.register(GuardCollector(api.failures))

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        sw = switch
        body = {
            "status": "failed" if sw.failed else "ok",
            "version": __version__,
            "uptime_s": round(time.time() - sw.started_at, 3),
            "cards": int(sw.state.n_cards),
            "terminals": int(sw.state.n_terminals),
            "connections": {name: len(sw.intake.connections[p])
                            for p, name in PROTOCOL_NAMES.items()},
            "journal": {"next_record": sw.engine.journal.next_no,
                        "durable": sw.durability.durable_no,
                        "waiting_batches": len(sw.durability.waiting)},
        }
        if sw.failed:
            body["detail"] = f"journal commit failed: {sw.failed}"
        return web.json_response(body, status=503 if sw.failed else 200)

    async def readyz(_: web.Request) -> web.Response:
        ready, detail = switch.ready()
        return web.json_response({"ready": ready, "detail": detail}, status=200 if ready else 503)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_http(switch: Switch, host: str, port: int,
                     operators: Operators | None = None) -> web.AppRunner:
    context = server_context(switch.config.admin.tls, "admin.tls")
    runner = web.AppRunner(make_app(switch, operators), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(f"cannot listen for http on {host}:{port}: {exc.strerror or exc} "
                          "(set server.http_port, admin.host)") from exc
    return runner
