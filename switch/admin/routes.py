"""The admin API: JSON over HTTP on the switch's event loop (aiohttp), with operator tokens
and roles; the published catalogue is public. Every change is journaled (money and card state
in the journal, everything in ``admin_log``) with the operator who made it, and answered once
durable. Card numbers appear masked in every answer and log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable

import msgspec
import numpy as np
from aiohttp import web

from onecard.core import operations
from onecard.core.state import (
    CARD_ACTIVE,
    CARD_CANCELLED,
    CARD_FROZEN,
    CARD_LOST,
    CARD_REPLACED,
    FN_ECARD,
    HOLDER_DENIED,
)
from onecard.protocols.cards import luhn_digit
from onecard.protocols.codes import CODES
from onecard.protocols.enums import CARD_STATUS, FUNCTION
from onecard.switch import catalogue, logs
from onecard.switch.admin import disbursements, schema
from onecard.switch.admin.guard import FailureLimiter
from onecard.switch.admin.operators import Operator, Operators
from onecard.switch.admin.problems import Problem, problem_response
from onecard.switch.admin.schema import Body
from onecard.switch.server import Switch
from onecard.switch.store import backend, encrypt

log = logging.getLogger("onecard.admin")
PUBLISHED_CACHE_ENTRIES = 1024          # distinct filter combinations kept
# Bodies larger than this are decoded in a worker thread (a disbursement batch item by item):
# the loop keeps serving terminals between the GIL's switch intervals (100,000 items: ~6 MB).
OFF_LOOP_BODY_BYTES = 256 << 10
STATUS_NAMES = CARD_STATUS.name_of
UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


mask = encrypt.mask


Handler = Callable[[web.Request, Operator], Awaitable[web.Response]]


class AdminApi:
    def __init__(self, switch: Switch, operators: Operators) -> None:
        self.switch = switch
        self.ops = operators
        self.db = backend.open_db(switch.config, fence_epoch=switch.lease_epoch)
        # One disbursement batch at a time: between reading what was paid and recording the
        # new credits the handler waits for durability, and a second identical batch read in
        # that gap would pay again.
        self.disbursing = asyncio.Lock()
        # The public catalogue is unauthenticated: answered from memory, so that a flood of
        # GETs cannot take the event loop from the terminals. Only this process changes the
        # catalogue, and every change clears the cache.
        self.published: dict[tuple, bytes] = {}
        switch.catalogue_listeners.append(self.published.clear)
        self.failures = FailureLimiter(switch.config.admin.token_failures_per_minute)
        self.body_limit_bytes = switch.config.admin.body_limit_bytes

    # ---- plumbing ----------------------------------------------------------------------------

    def guarded(self, role: str, handler: Handler):
        """``handler`` for an operator with ``role``; what it raises is answered by the
        ``problems`` middleware (switch/admin/problems.py)."""
        async def run(request: web.Request) -> web.Response:
            # Nothing of the body is read before the operator and the size are accepted.
            op = self.operator(request, role)
            size = request.content_length
            if size is not None and size > self.body_limit_bytes:
                raise Problem(413, "Content Too Large", f"body of {size} bytes: at most "
                              f"{self.body_limit_bytes} (admin.body_bytes_max)")
            return await handler(request, op)
        return run

    def operator(self, request: web.Request, role: str) -> Operator:
        peer = request.remote or "unknown"
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise Problem(401, "Unauthorized", "send Authorization: Bearer <token>",
                          **UNAUTHORIZED)
        # The right token always passes, even from an address that is guessing (operators
        # behind one NAT or proxy with a guesser): a token is 256 random bits, so the limit
        # is not what stops guessing; it bounds a guesser's cost and log lines.
        op = self.ops.find(auth[7:].strip())
        if op is None:
            wait_s = self.failures.retry_after_s(peer)
            if wait_s:
                raise Problem(429, "Too Many Requests", "too many wrong tokens from this "
                              f"address; retry in {wait_s} s", **{"Retry-After": str(wait_s)})
            self.failures.failed(peer)
            raise Problem(401, "Unauthorized", "unknown token", **UNAUTHORIZED)
        if role not in op.roles:
            raise Problem(403, "Forbidden", f"operator {op.name} lacks the {role} role")
        return op

    async def body(self, request: web.Request, kind: type[Body]) -> Body:
        """The body decoded as ``kind`` (reading it is bounded by the application's
        client_max_size, admin.body_bytes_max)."""
        raw = await request.read()
        return await self.checked(len(raw) > OFF_LOOP_BODY_BYTES, schema.decode, raw, kind)

    @staticmethod
    async def checked(large: bool, parse: Callable, *args):
        """``parse(*args)``, in a worker thread when ``large`` (a BodyError is the
        middleware's 400 or 422)."""
        if large:
            return await asyncio.to_thread(parse, *args)
        return parse(*args)

    def audit(self, op: Operator, action: str, target: str, details: dict,
              record_no: int | None = None) -> None:
        role = ",".join(op.roles)
        # The id given, not left to SQLite's rowid: PostgreSQL's bigint key has no default,
        # and max + 1 is what SQLite would choose (this process is the store's one writer).
        self.db.execute("INSERT INTO admin_log (id, at, operator, role, action, target, "
                        "details, record_no) VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM "
                        "admin_log), ?, ?, ?, ?, ?, ?, ?)",
                        (dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), op.name, role,
                         action, target, json.dumps(details, ensure_ascii=False), record_no))
        log.info("operator %s: %s %s", op.name, action, target,
                 extra=logs.extra("operator_action", operator=op.name, role=role,
                                  action=action, target=target, record=record_no))

    def card(self, pan: str | int, status: int = 400) -> tuple[int, int]:
        pan = str(pan)
        if not schema.valid_card_path(pan):
            raise Problem(status, "Bad Request" if status == 400 else "Unprocessable Content",
                          "card number must be 12-19 ASCII digits")
        idx = self.switch.state.card_index(int(pan))
        if idx < 0:
            raise Problem(404, "Not Found", f"no card {mask(pan)}")
        return idx, int(self.switch.state.cards[idx]["account"])

    def masked(self, idx: int) -> str:
        return mask(int(self.switch.state.cards[idx]["pan"]))

    def card_view(self, idx: int) -> dict:
        st = self.switch.state
        c = st.cards[idx]
        a = st.accounts[c["account"]]
        row = self.db.execute("SELECT bank, kind FROM cards WHERE pan_hmac = ?",
                              (self.switch.keys.pan_hmac(int(c["pan"])),)).fetchone()
        return {"card": mask(int(c["pan"])), "status": STATUS_NAMES.get(int(c["status"])),
                "functions": FUNCTION.names(int(c["functions"])),
                "expiry": f"{int(c['expiry_yymm']):04d}",
                "region": int(st.regions[c["region"]]["code"]),
                "balance_fen": int(a["balance_fen"]), "medical_fen": int(a["medical_fen"]),
                "deny_listed": bool(a["flags"] & HOLDER_DENIED),
                "bank": row[0] if row else None, "kind": row[1] if row else None}

    async def durable(self, record_no: int) -> None:
        try:
            await self.switch.committed(record_no)
        except RuntimeError as exc:
            raise Problem(503, "Service Unavailable", str(exc)) from exc

    # ---- catalogue ---------------------------------------------------------------------------

    async def public_catalogue(self, request: web.Request) -> web.Response:
        q = request.query
        key = (q.get("region"), q.get("domain"), q.get("place"))
        body = self.published.get(key)
        if body is None:
            try:
                if key[0] is not None and not (key[0].isascii() and key[0].isdigit()
                                               and len(key[0]) <= 6):
                    raise ValueError(f"region {key[0]!r}: a province (31) or region code "
                                     "(310000)")
                region = int(key[0]) if key[0] is not None else None
                listing = catalogue.listing(self.db, region=region, domain=key[1],
                                            place=key[2])
            except ValueError as exc:
                return problem_response(400, "Bad Request", str(exc))
            body = json.dumps(listing, ensure_ascii=False).encode()
            if len(self.published) >= PUBLISHED_CACHE_ENTRIES:
                self.published.clear()
            self.published[key] = body
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    async def catalogue_change(self, request: web.Request, op: Operator) -> web.Response:
        method = request.method
        code = request.match_info.get("code")
        fields: dict = {}
        if method == "POST":
            fields = msgspec.to_builtins(await self.body(request, schema.CatalogueAdd))
            code = fields.pop("code")
        elif method == "PATCH":
            fields = msgspec.to_builtins(await self.body(request, schema.CatalogueChange))
        assert code is not None             # in the body (POST) or the path (PATCH, DELETE)
        action = {"POST": "add", "PATCH": "change", "DELETE": "retire"}[method]
        link = self.switch.link
        sync = link.catalogue if link is not None else None
        # A change refused (CatalogueError) is the middleware's 404, 409 or 422.
        if sync is None:
            version = catalogue.change(self.db, op.name, action, code, fields)
        else:
            version = await self._catalogue_everywhere(sync, op, action, code, fields)
        self.switch.catalogue_changed(self.db)                         # next batch uses it
        self.audit(op, f"catalogue.{action}", code, {**fields, "version": version})
        return web.json_response({"code": code, "action": action, "version": version})

    async def _catalogue_everywhere(self, sync, op: Operator, action: str, code: str,
                                    fields: dict) -> int:
        """A regional switch: checked here, published for every region, then made here
        (switch/region/catalogues.py). Another region's change first is CatalogueConflict:
        the middleware's 409."""
        import nats.errors

        async with sync.lock:
            catalogue.change(self.db, op.name, action, code, fields, dry_run=True)
            try:
                version = await sync.publish(action, code, fields, op.name)
            except (TimeoutError, nats.errors.Error) as exc:
                raise Problem(503, "Service Unavailable", f"the catalogue is every region's: "
                              f"its stream cannot be reached ({exc!r})") from exc
            made = catalogue.change(self.db, op.name, action, code, fields)
            if made != version:
                raise Problem(500, "Internal Server Error", f"catalogue version {made} made "
                              f"here, {version} published")
            return version

    async def catalogue_history(self, request: web.Request, op: Operator) -> web.Response:
        rows = self.db.execute("SELECT version, code, change, operator, at FROM "
                               "catalogue_history ORDER BY version").fetchall()
        return web.json_response([{"version": v, "code": c, "change": json.loads(ch),
                                   "operator": o, "at": at} for v, c, ch, o, at in rows])

    # ---- cards -------------------------------------------------------------------------------

    async def card_get(self, request: web.Request, op: Operator) -> web.Response:
        idx, _ = self.card(request.match_info["pan"])
        return web.json_response(self.card_view(idx))

    async def card_status(self, request: web.Request, op: Operator) -> web.Response:
        action = request.match_info["action"]
        idx, _ = self.card(request.match_info["pan"])
        status = int(self.switch.state.cards[idx]["status"])
        allowed = {"loss": ((CARD_ACTIVE, CARD_FROZEN), CARD_LOST),
                   "unfreeze": ((CARD_LOST, CARD_FROZEN), CARD_ACTIVE),
                   "freeze": ((CARD_ACTIVE,), CARD_FROZEN)}
        if action not in allowed:
            raise Problem(404, "Not Found", f"no card action {action!r}")
        before, after = allowed[action]
        if status not in before:
            raise Problem(409, "Conflict", f"card is {STATUS_NAMES[status]}: cannot {action}")
        no = self.switch.door.apply(operations.card_change, idx, status=after,
                                    operator=self.ops.index(op))
        await self.durable(no)
        self.switch.cards_changed([idx])
        self.audit(op, f"card.{action}", self.masked(idx), {"status": STATUS_NAMES[after]}, no)
        return web.json_response(self.card_view(idx))

    def _new_pan(self, old: int, electronic: bool) -> int:
        st = self.switch.state
        prefix = str(old)[:5] + ("9" if electronic else "1")
        for serial in range(st.n_cards, st.n_cards + 1_000_000):
            body = f"{prefix}{serial:012d}"
            pan = int(body + luhn_digit(body))
            if st.card_index(pan) < 0:
                return pan
        raise Problem(500, "Internal Server Error", "no free card number")

    async def card_issue(self, request: web.Request, op: Operator) -> web.Response:
        """replace: a new chip card on the same accounts, the old number refused from now;
        ecard: an electronic card (its own number) on the same accounts."""
        action = request.match_info["action"]
        idx, account = self.card(request.match_info["pan"])
        st = self.switch.state
        c = st.cards[idx]
        if int(c["status"]) in (CARD_REPLACED, CARD_CANCELLED):
            raise Problem(409, "Conflict", f"card is {STATUS_NAMES[int(c['status'])]}")
        electronic = action == "ecard"
        new_pan = self._new_pan(int(c["pan"]), electronic)
        today = dt.date.today()
        functions = (int(c["functions"]) | FN_ECARD) if electronic else (
            int(c["functions"]) & ~FN_ECARD)

        def issue(a) -> tuple[int, int]:      # one clock for both records
            new_idx, no = operations.card_new(a, new_pan, account, region=int(c["region"]),
                                              expiry_yymm=((today.year + 10) % 100) * 100
                                              + today.month, functions=functions,
                                              operator=self.ops.index(op))
            if not electronic:
                no = operations.card_change(a, idx, status=CARD_REPLACED,
                                            operator=self.ops.index(op))
            return new_idx, no

        new_idx, no = self.switch.door.apply(issue)
        await self.durable(no)
        self.switch.cards_changed([idx, new_idx])
        self._insert_card(idx, new_idx, new_pan, account, electronic)
        self.audit(op, f"card.{action}", mask(int(c["pan"])), {"new_card": mask(new_pan)}, no)
        view = self.card_view(new_idx)
        view["card_number"] = str(new_pan)      # the holder's new number, once, to the counter
        return web.json_response(view, status=201)

    def _insert_card(self, old_idx: int, new_idx: int, new_pan: int, account: int,
                     electronic: bool) -> None:
        """The new card's row: the holder's name and ID number opened from the old card's row
        and sealed again bound to the new row."""
        keys = self.switch.keys
        old = self.db.execute("SELECT holder_name, id_number, bank FROM cards WHERE idx = ?",
                              (old_idx,)).fetchone()
        name, ident, bank = ("", "", "") if old is None else (
            keys.open_text("cards", "holder_name", old_idx, old[0]),
            keys.open_text("cards", "id_number", old_idx, old[1]), old[2])
        self.db.execute("INSERT INTO cards VALUES (?,?,?,?,?,?,?,?)", encrypt.card_row(
            keys, new_idx, new_pan, account, name, ident, bank,
            "electronic" if electronic else "chip"))

    async def card_bank(self, request: web.Request, op: Operator) -> web.Response:
        idx, account = self.card(request.match_info["pan"])
        bank = (await self.body(request, schema.Bank)).bank.strip()
        if len(bank) < 2:
            raise Problem(422, "Unprocessable Content", "bank: a partner bank's name")
        self.db.execute("UPDATE cards SET bank = ? WHERE account = ?", (bank, account))
        self.audit(op, "card.bank", self.masked(idx), {"bank": bank})
        return web.json_response(self.card_view(idx))

    async def card_topup(self, request: web.Request, op: Operator) -> web.Response:
        pan = request.match_info["pan"]
        idx, _ = self.card(pan)
        amount = (await self.body(request, schema.TopUp)).amount_fen
        limit = self.switch.config.limits.amount_fen_max
        if amount > limit:
            raise Problem(422, "Unprocessable Content", f"amount_fen must be an integer from 1 "
                          f"to {limit} (limits.amount_fen_max)")
        code, no = self.switch.door.apply(operations.credit, int(pan), amount,
                                          operator=self.ops.index(op))
        if code != "00":
            raise Problem(409, "Conflict", f"top-up refused: {code} {dict(CODES)[code]}")
        await self.durable(no)
        self.audit(op, "card.topup", mask(pan), {"amount_fen": amount}, no)
        return web.json_response(self.card_view(idx))

    async def filing(self, request: web.Request, op: Operator) -> web.Response:
        data = await self.body(request, schema.Filing)
        idx, account = self.card(data.card, status=422)
        provs = catalogue.provinces(self.db)
        province = data.province
        if province not in provs:
            raise Problem(422, "Unprocessable Content", f"province must be one of {provs}")
        self.db.execute("INSERT INTO filings VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                        (account, province, op.name, dt.date.today().isoformat()))
        entry = self.switch.state.filings.get(account)
        mask_bits = (entry[0] if entry else 0) | (1 << provs.index(province))
        self.switch.state.filings.set(account, mask_bits, 0)
        self.audit(op, "filing.add", self.masked(idx), {"province": province})
        return web.json_response({"card": self.masked(idx),
                                  "provinces": [p for i, p in enumerate(provs)
                                                if mask_bits >> i & 1]}, status=201)

    # ---- disbursements -----------------------------------------------------------------------

    async def disburse(self, request: web.Request, op: Operator) -> web.Response:
        data = await self.body(request, schema.Disbursement)
        row = self.db.execute("SELECT idx FROM programmes WHERE code = ?",
                              (data.programme,)).fetchone()
        if row is None:
            codes = [c for (c,) in self.db.execute("SELECT code FROM programmes")]
            raise Problem(422, "Unprocessable Content", f"programme must be one of {codes}")
        programme = row[0]
        large = len(data.items) > OFF_LOOP_BODY_BYTES
        rows = await self.checked(large, schema.split_items, data.items)
        items_max = self.switch.config.admin.disbursement_items_max
        if len(rows) > items_max:
            raise Problem(413, "Content Too Large", f"{len(rows)} items in one batch: at most "
                          f"{items_max} (admin.disbursement_items_max)")
        try:
            period = disbursements.parse_period(data.period)
        except ValueError as exc:
            raise Problem(422, "Unprocessable Content", f"period: {exc}") from exc
        pans, amounts = await self.checked(large, schema.items_arrays, rows)
        async with self.disbursing:
            return await self._disburse(op, data.programme, programme, period, pans, amounts)

    async def _disburse(self, op: Operator, code: str, programme: int, period: int,
                        pans: np.ndarray, amounts: np.ndarray) -> web.Response:
        keys = self.switch.keys
        paid = disbursements.already_paid(self.db, keys, programme, period, pans)
        _, first = np.unique(pans, return_index=True)
        fresh = np.zeros(len(pans), dtype=bool)
        fresh[first] = True                                 # one credit per card per batch
        fresh &= ~np.isin(pans, np.fromiter(paid, dtype=np.uint64, count=len(paid)))
        codes = np.full(len(pans), "94", dtype=object)
        nos = np.zeros(len(pans), dtype=np.uint64)
        rcs, credited_nos = self.switch.door.apply(operations.disburse, programme + 1, period,
                                                   pans[fresh], amounts[fresh],
                                                   self.ops.index(op))
        codes[fresh] = [CODES[r][0] for r in rcs]
        nos[fresh] = credited_nos
        credited = codes == "00"               # record numbers start at 0: test codes, not nos
        last = int(nos[credited].max()) if credited.any() else None
        if last is not None:
            await self.durable(last)
        disbursements.record(self.db, keys, programme, period, pans, amounts, codes, nos,
                             op.name)
        self.audit(op, "disbursement", code, {"period": period, "items": len(pans),
                                              "credited": int(credited.sum())}, last)
        results = [{"card": mask(int(p)), "amount_fen": int(a), "result": c,
                    "meaning": disbursements.RESULTS.get(c, dict(CODES).get(c))}
                   for p, a, c in zip(pans, amounts, codes, strict=True)]
        return web.json_response({"programme": code, "period": period,
                                  "credited": int(credited.sum()),
                                  "credited_fen": int(amounts[credited].sum()),
                                  "items": results})

    async def disbursement_report(self, request: web.Request, op: Operator) -> web.Response:
        code = request.match_info["programme"]
        try:
            period = disbursements.parse_period(request.match_info["period"])
        except ValueError as exc:
            raise Problem(400, "Bad Request", str(exc)) from exc
        if self.db.execute("SELECT 1 FROM programmes WHERE code = ?", (code,)).fetchone() is None:
            raise Problem(404, "Not Found", "no such programme (GET /admin/disbursements "
                          "lists them)")
        # Sorted here, not by ORDER BY: PostgreSQL's collation may not order the masked
        # numbers ('*' among digits) as SQLite's byte order does.
        rows = sorted(self.db.execute(
            "SELECT d.card, d.amount_fen, d.result, d.record_no, d.operator, d.at FROM "
            "disbursements d JOIN programmes p ON p.idx = d.programme WHERE p.code = ? AND "
            "d.period = ?", (code, period)).fetchall(), key=lambda r: r[0])
        return web.json_response({"programme": code, "period": period, "items": [
            {"card": card, "amount_fen": amt, "result": res, "record": no,
             "operator": who, "at": at} for card, amt, res, no, who, at in rows]})

    async def disbursement_totals(self, request: web.Request, op: Operator) -> web.Response:
        return web.json_response(disbursements.totals(self.db),
                                 dumps=lambda d: json.dumps(d, ensure_ascii=False))

    # ---- views -------------------------------------------------------------------------------

    async def audit_log(self, request: web.Request, op: Operator) -> web.Response:
        text = request.query.get("limit", "100")
        if not (text.isascii() and text.isdigit() and len(text) <= 5
                and 1 <= int(text) <= 10_000):
            return problem_response(400, "Bad Request", "limit: an integer from 1 to 10000")
        limit = int(text)
        rows = self.db.execute("SELECT at, operator, role, action, target, details, record_no "
                               "FROM admin_log ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return web.json_response([{"at": at, "operator": o, "role": r, "action": a,
                                   "target": t, "details": json.loads(d), "record": n}
                                  for at, o, r, a, t, d, n in rows],
                                 dumps=lambda d: json.dumps(d, ensure_ascii=False))

    def routes(self, app: web.Application) -> None:
        g = self.guarded
        app.router.add_get("/catalogue", self.public_catalogue)
        app.router.add_get("/admin/catalogue/history", g("ops", self.catalogue_history))
        app.router.add_post("/admin/catalogue", g("catalogue", self.catalogue_change))
        app.router.add_patch("/admin/catalogue/{code}", g("catalogue", self.catalogue_change))
        app.router.add_delete("/admin/catalogue/{code}", g("catalogue", self.catalogue_change))
        app.router.add_get("/admin/cards/{pan}", g("ops", self.card_get))
        app.router.add_post("/admin/cards/{pan}/{action:loss|unfreeze|freeze}",
                            g("card", self.card_status))
        app.router.add_post("/admin/cards/{pan}/{action:replace|ecard}",
                            g("card", self.card_issue))
        app.router.add_post("/admin/cards/{pan}/bank", g("card", self.card_bank))
        app.router.add_post("/admin/cards/{pan}/topup", g("finance", self.card_topup))
        app.router.add_post("/admin/filings", g("card", self.filing))
        app.router.add_post("/admin/disbursements", g("finance", self.disburse))
        app.router.add_get("/admin/disbursements", g("ops", self.disbursement_totals))
        app.router.add_get("/admin/disbursements/{programme}/{period}",
                           g("ops", self.disbursement_report))
        app.router.add_get("/admin/audit", g("ops", self.audit_log))


def sync(switch: Switch) -> int:
    """At start: report rows for journaled disbursement credits that lack them."""
    conn = backend.open_db(switch.config, synchronous="FULL", fence_epoch=switch.lease_epoch)
    try:
        return disbursements.sync_from_journal(conn, switch.keys, switch.state.cards["pan"])
    finally:
        conn.close()

