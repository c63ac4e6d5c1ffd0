"""Clearing in the running switch (issue 16): the admin API clears a date, serves its
positions and each party's file (role finance), refuses bad dates and parties with problem
documents, and counts runs in /metrics; the schedule after each cut-over."""

import datetime as dt
import time

import numpy as np
import pytest

from onecard.protocols import clearing
from onecard.switch.clearing import files
from onecard.switch.clearing.service import ClearingService

from conftest import AdminClient, Supply, assert_problem, copy_demo, iso_session, start_switch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sw(demo_dir, tmp_path_factory):
    s = start_switch(copy_demo(demo_dir, tmp_path_factory, "clearing"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def supply(demo_dir, terminals):
    """One per module: tests on the shared switch never share a terminal (its STANs) or card."""
    return Supply(demo_dir, terminals)


def today() -> dt.date:
    now_us = np.array([time.time_ns() // 1000])
    return clearing.day_date(clearing.settlement_days(now_us, 23 * 60)[0])


def not_begun() -> str:
    """The settlement date after the current one (cut-over 23:00): from 23:00 to midnight
    China time that is the day after the calendar's tomorrow, else the calendar's tomorrow,
    which a calendar check let through."""
    return (today() + dt.timedelta(days=1)).isoformat()


def _sent_then_cleared(sw, info, requests) -> tuple[AdminClient, str, dict]:
    """Send ``requests(t)`` from terminal ``info`` (each answered 00), then clear today
    through the API (200): the client, the date and the day's JSON."""
    sock, t = iso_session(sw, info)
    try:
        replies = t.send(*requests(t))
    finally:
        sock.close()
    assert [r["39"] for r in replies] == ["00"] * len(replies)
    api = AdminClient(sw)
    date = today().isoformat()
    r = api.post(f"/admin/clearing/{date}", role="finance")
    assert r.status == 200, r.text
    return api, date, r.json()


def test_a_date_is_cleared_through_the_api_with_its_files(sw, supply, tmp_path):
    info = supply.terminal("FIN-PAY")
    api, date, day = _sent_then_cleared(sw, info, lambda t: [
        t.purchase(supply.card(), 20_000), t.purchase(supply.card(), 300)])
    nets = {p["party"]: p["net_fen"] for p in day["positions"]}
    assert day["records"] >= 2 and sum(nets.values()) == 0
    assert nets[f"acquirer:{info.merchant}"] == 20_300 - 100 - 2           # FIN-PAY's fees
    again = api.get(f"/admin/clearing/{date}/positions", role="finance")
    assert again.status == 200 and again.json() == day
    got = api.get(f"/admin/clearing/{date}/files/acquirer:{info.merchant}", role="finance")
    assert got.status == 200 and got.content_type.startswith("text/csv")
    path = tmp_path / "file.csv"
    path.write_text(got.text)
    f = files.read(path)
    assert f.party == f"acquirer:{info.merchant}" and f.net_fen == nets[f.party]
    audit = api.get("/admin/audit?limit=5").json()
    assert any(a["action"] == "clearing.run" and a["target"] == date for a in audit)
    text = api.get("/metrics", role=None).text
    assert "onecard_clearing_runs_total 2.0" in text           # the POST and the GET


@pytest.mark.parametrize("path, status", [
    ("/admin/clearing/2026-13-01/positions", 400),
    ("/admin/clearing/yesterday/positions", 400),
    ("/admin/clearing/2999-01-01/positions", 422),
    ("/admin/clearing/2026-11-30/files/acquirer:NOBODY", 404),
])
def test_bad_dates_and_parties_are_problem_documents(sw, path, status):
    doc = assert_problem(AdminClient(sw).get(path, role="finance"), status)
    assert doc["detail"]


def test_clearing_needs_the_finance_role(sw):
    assert_problem(AdminClient(sw).get(f"/admin/clearing/{today()}/positions", role="ops"), 403)


def _config():
    from types import SimpleNamespace

    cfg = SimpleNamespace(cutover="23:00", grace_s=60.0, out_dir="", scheduled=True,
                          fee_table=lambda: dict(clearing.FEES_DEFAULT))
    return SimpleNamespace(clearing=cfg, data_dir="unused")


@pytest.mark.parametrize("now, at, date", [
    ((22, 0), (11, 30, 23, 1), (11, 30)),           # before the cut-over: tonight's run
    ((23, 0, 30), (11, 30, 23, 1), (11, 30)),       # within the grace: the date just closed
    ((23, 2), (12, 1, 23, 1), (12, 1)),             # after the run: tomorrow night's
])
def test_the_schedule_clears_each_date_after_its_cutover(now, at, date):

    service = ClearingService(_config(), None, None)
    got_at, got_date = service.next_run(dt.datetime(2026, 11, 30, *now, tzinfo=clearing.CST))
    assert got_at == dt.datetime(2026, *at, tzinfo=clearing.CST)
    assert got_date == dt.date(2026, *date)


def test_a_switch_on_postgresql_clears_its_dates(demo_dir, terminals, tmp_path, pg_server):
    """The same clearing from a PostgreSQL store: through the running switch's API, and by
    the command at rest."""
    import json
    import shutil

    from onecard.switch import cli

    from conftest import on_postgresql, store_config

    path = tmp_path / "data"
    shutil.copytree(demo_dir, path)
    on_postgresql(path, pg_server, "clearing_pg")
    supply = Supply(demo_dir, terminals)
    info = supply.terminal("FIN-PAY")
    s = start_switch(path)
    try:
        sock, t = iso_session(s, info)
        try:
            (reply,) = t.send(t.purchase(supply.card(), 10_000))
        finally:
            sock.close()
        assert reply["39"] == "00"
        r = AdminClient(s).post(f"/admin/clearing/{today()}", role="finance")
        assert r.status == 200, r.text
        nets = {p["party"]: p["net_fen"] for p in r.json()["positions"]}
        assert nets[f"acquirer:{info.merchant}"] == 10_000 - 50 and sum(nets.values()) == 0
    finally:
        s.stop()
    cfg = tmp_path / "pg.toml"
    cfg.write_text(store_config(path))
    out = tmp_path / "positions.json"
    assert cli.main(["clearing", "run", "--config", str(cfg), "--data-dir", str(path),
                     "--date", today().isoformat(), "--json", str(out)]) == 0
    again = {p["party"]: p["net_fen"] for p in json.loads(out.read_text())["positions"]}
    assert again == nets


def _reconciled_batch(sw, supply):
    """A POS batch the switch and the terminal disagree on: the switch approved 1,000,
    2,500 and 400 fen; the terminal uploads the first, the second as 2,600 and one of 700
    the switch never saw. (terminal info, the uploaded-only card's number)."""
    info = supply.terminal("FIN-PAY")
    sock, t = iso_session(sw, info)
    card, extra_card = supply.card(), supply.card()
    try:
        p = t.send(t.purchase(card, 1_000), t.purchase(card, 2_500), t.purchase(card, 400))
        assert [r["39"] for r in p] == ["00"] * 3
        (s,) = t.send(t.settlement(4_500, 3, 0, 0, batch=5))
        assert s["48"][-1] == "2"                                 # not balanced
        up = t.send(t.upload(card, 1_000, p[0]["11"], batch=5),
                    t.upload(card, 2_600, p[1]["11"], batch=5),
                    t.upload(extra_card, 700, "000900", batch=5), t.upload_end(3, batch=5))
        assert [r["39"] for r in up] == ["00"] * 4
    finally:
        sock.close()
    return info, p, extra_card


def test_a_batch_upload_gives_exceptions_an_adjustment_resolves(sw, supply):
    info, p, extra_card = _reconciled_batch(sw, supply)
    api = AdminClient(sw)
    date = today().isoformat()
    listed = api.get(f"/admin/clearing/{date}/exceptions", role="finance")
    assert listed.status == 200, listed.text
    mine = {e["kind"]: e for e in listed.json() if e["terminal"] == info.tid}
    assert set(mine) == {"AMOUNT_MISMATCH", "MISSING_AT_TERMINAL", "MISSING_AT_SWITCH"}
    assert (mine["AMOUNT_MISMATCH"]["seq"], mine["AMOUNT_MISMATCH"]["switch_amount_minor"],
            mine["AMOUNT_MISMATCH"]["terminal_amount_minor"]) == (int(p[1]["11"]), 2_500, 2_600)
    assert mine["MISSING_AT_TERMINAL"]["seq"] == int(p[2]["11"])
    extra = mine["MISSING_AT_SWITCH"]
    assert (extra["seq"], extra["card"]) == (900, extra_card[:6] + "*" * (len(extra_card) - 10)
                                             + extra_card[-4:])
    assert (extra["suggested_fen"], extra["suggested_direction"]) == (700, "acquirer_owed")
    assert all(e["status"] == "open" for e in mine.values())

    before = {x["party"]: x["net_fen"] for x in
              api.get(f"/admin/clearing/{date}/positions", role="finance").json()["positions"]}
    adj = api.post(f"/admin/clearing/exceptions/{extra['id']}/adjustment",
                   {"amount_fen": 700, "direction": "acquirer_owed", "note": "receipt seen"},
                   role="finance")
    assert adj.status == 201, adj.text
    assert adj.json()["status"] == "resolved" and adj.json()["adjustment"]["amount_fen"] == 700
    after = {x["party"]: x["net_fen"] for x in
             api.post(f"/admin/clearing/{date}", role="finance").json()["positions"]}
    acquirer, issuer = f"acquirer:{info.merchant}", extra["issuer"]
    assert after[acquirer] - before[acquirer] == 700
    assert after[issuer] - before.get(issuer, 0) == -700 and sum(after.values()) == 0
    audit = api.get("/admin/audit?limit=10").json()
    logged = [a for a in audit if a["action"] == "clearing.adjust"]
    assert logged and logged[0]["target"] == extra["id"] and logged[0]["record"] is not None
    assert extra_card not in str(audit)                       # masked in the admin log
    again = api.post(f"/admin/clearing/exceptions/{extra['id']}/adjustment",
                     {"amount_fen": 700, "direction": "acquirer_owed"}, role="finance")
    assert_problem(again, 409)
    resolved = api.get(f"/admin/clearing/{date}/exceptions?status=resolved",
                       role="finance").json()
    assert [e["id"] for e in resolved if e["terminal"] == info.tid] == [extra["id"]]
    assert [e for e in resolved if e["id"] == extra["id"]] == [adj.json()]   # as journaled
    text = api.get("/metrics", role=None).text
    assert "onecard_clearing_last_exceptions" in text


@pytest.mark.parametrize("ident, body, status", [
    ("nonsense", {"amount_fen": 1, "direction": "acquirer_owed"}, 404),
    ("20261130-MISSING_AT_SWITCH-NOBODY-1-1", {"amount_fen": 1, "direction": "acquirer_owed"},
     404),
    ("29990101-MISSING_AT_SWITCH-X-1-1", {"amount_fen": 1, "direction": "acquirer_owed"}, 422),
    ("20261130-MISSING_AT_SWITCH-X-1-1", {"amount_fen": -1, "direction": "acquirer_owed"}, 422),
    ("20261130-MISSING_AT_SWITCH-X-1-1", {"amount_fen": 1, "direction": "sideways"}, 422),
    ("20261130-MISSING_AT_SWITCH-X-1-1", {"amount_fen": 1.5, "direction": "acquirer_owed"},
     422),
])
def test_bad_adjustments_are_problem_documents(sw, ident, body, status):
    api = AdminClient(sw)
    before = api.get("/admin/audit?limit=1").json()
    r = api.post(f"/admin/clearing/exceptions/{ident}/adjustment", body, role="finance")
    assert assert_problem(r, status)["detail"]
    assert api.get("/admin/audit?limit=1").json() == before    # nothing done


def test_card_less_reversals_are_exceptions_and_the_date_still_clears(sw, supply):
    """0400s of requests the switch never had, for a card it does not know: card-less
    REVERSAL records. The date clears (they are held by suspense:onecard, 0 fen here), and
    each is an UNATTRIBUTED exception an adjustment of 0 fen acknowledges."""
    info = supply.terminal("FIN-PAY")
    unknown = supply.card()[:-6] + "999999"
    api, date, day = _sent_then_cleared(sw, info, lambda t: [
        t.reversal(unknown, 700, "910001"), t.reversal(unknown, 900, "910002")])
    assert sum(p["net_fen"] for p in day["positions"]) == 0
    listed = api.get(f"/admin/clearing/{date}/exceptions", role="finance").json()
    mine = [e for e in listed if e["kind"] == "UNATTRIBUTED" and e["terminal"] == info.tid]
    assert [(e["seq"], e["reason"], e["status"]) for e in mine] == [
        (910001, "no_card", "open"), (910002, "no_card", "open")]
    again = api.get(f"/admin/clearing/{date}/exceptions", role="finance").json()
    assert [e["id"] for e in again if e in mine] == [e["id"] for e in mine]    # stable
    ident = mine[0]["id"]
    moved = api.post(f"/admin/clearing/exceptions/{ident}/adjustment",
                     {"amount_fen": 100, "direction": "acquirer_owed"}, role="finance")
    assert "no card" in assert_problem(moved, 422)["detail"]
    ack = api.post(f"/admin/clearing/exceptions/{ident}/adjustment",
                   {"amount_fen": 0, "direction": "acquirer_owed", "note": "issuer lost it"},
                   role="finance")
    assert ack.status == 201, ack.text
    assert ack.json()["status"] == "resolved"
    resolved = api.get(f"/admin/clearing/{date}/exceptions?status=resolved",
                       role="finance").json()
    assert ident in [e["id"] for e in resolved]
    assert_problem(api.post(f"/admin/clearing/exceptions/{ident}/adjustment",
                            {"amount_fen": 0, "direction": "acquirer_owed"},
                            role="finance"), 409)


def test_an_empty_date_clears_to_no_positions_and_no_files(sw):
    api = AdminClient(sw)
    r = api.post("/admin/clearing/2001-01-01", role="finance")
    assert r.status == 200, r.text
    assert (r.json()["records"], r.json()["positions"]) == (0, [])
    got = api.get("/admin/clearing/2001-01-01/files/scheme:onecard", role="finance")
    assert "no line" in assert_problem(got, 404)["detail"]


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/admin/clearing/2026-11-30/files/" + "x" * 5_000, 400),
    ("GET", "/admin/clearing/2026-11-30/files/acquirer:" + "A" * 5_000, 400),
    ("GET", "/admin/clearing/2026-11-30/files/nobody:X", 400),
    ("GET", "/admin/clearing/2026-11-30/files/acquirer:", 400),
    ("GET", "/admin/clearing/2026-11-30/files/acquirer:..", 404),
    ("GET", "/admin/clearing/2026-11-30/files/%2e%2e%2facquirer:X", 400),
    ("GET", "/admin/clearing/" + "9" * 5_000 + "/positions", 400),
    ("POST", "/admin/clearing/" + "9" * 5_000, 400),
    ("GET", "/admin/clearing/NOT_BEGUN/positions", 422),
    ("POST", "/admin/clearing/NOT_BEGUN", 422),
    ("GET", "/admin/clearing/NOT_BEGUN/exceptions", 422),
    ("GET", "/admin/clearing/NOT_BEGUN/adjustments", 422),
    ("GET", "/admin/clearing/2026-11-30/exceptions?status=" + "z" * 5_000, 400),
    ("GET", "/admin/clearing/0000-01-01/exceptions", 400),
    ("POST", "/admin/clearing/exceptions/" + "x" * 5_000 + "/adjustment", 404),
    ("POST", "/admin/clearing/exceptions/20261130-UNATTRIBUTED-NONE-" + "9" * 40
     + "-1/adjustment", 404),
])
def test_odd_inputs_on_every_clearing_route_are_problem_documents(sw, method, path, status):
    path = path.replace("NOT_BEGUN", not_begun())
    body = {"amount_fen": 0, "direction": "acquirer_owed"} if method == "POST" else None
    r = AdminClient(sw).call(method, path, body, role="finance")
    assert assert_problem(r, status)["detail"]


def test_the_schedule_gives_a_failing_date_up_and_clears_the_next(caplog):
    """A date whose clearing fails is tried ATTEMPTS times, then logged and counted, and
    the next date is cleared: the schedule never stays on one date."""
    import asyncio

    from onecard.switch.clearing import service as service_module

    service = ClearingService(_config(), None, None)
    service.retry_s = 0
    bad, good = dt.date(2026, 11, 29), dt.date(2026, 11, 30)
    tried = []

    async def run(date, write=True):
        tried.append(date)
        if date == bad:
            service.failures += 1
            raise RuntimeError("disk on fire")

    dates = iter([bad, good])

    def next_run(now):
        date = next(dates, None)
        if date is None:
            raise asyncio.CancelledError          # end of the test's schedule
        return now, date

    service.run, service.next_run = run, next_run
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(service.schedule())
    assert tried == [bad] * service_module.ATTEMPTS + [good]
    assert (service.dates_failed, service.failures) == (1, service_module.ATTEMPTS)
    assert f"clearing {bad} failed {service_module.ATTEMPTS} times" in caplog.text


def test_positions_and_exceptions_asked_together_are_one_computation_in_a_worker(sw, supply):
    """Three exceptions lists and the positions of one date, asked at once at the same
    journal end: one worker process computes them (the serving process holds none of the
    date's records), the others wait for it and get the same answer."""
    from concurrent.futures import ThreadPoolExecutor

    api, date, day = _sent_then_cleared(sw, supply.terminal("FIN-PAY"),
                                        lambda t: [t.purchase(supply.card(), 700)])

    def computations() -> float:
        text = api.get("/metrics", role=None).text
        return float(next(line.split()[-1] for line in text.splitlines()
                          if line.startswith("onecard_clearing_computations_total")))

    before = computations()
    paths = [f"/admin/clearing/{date}/exceptions"] * 3 + [f"/admin/clearing/{date}/positions"]
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda p: api.get(p, role="finance"), paths))
    assert [r.status for r in replies] == [200] * 4
    assert replies[0].json() == replies[1].json() == replies[2].json()
    assert replies[3].json() == day                       # the POST's, kept
    assert computations() - before == 0                   # the POST's outcome was kept
    text = api.get("/metrics", role=None).text
    peak = next(line for line in text.splitlines()
                if line.startswith("onecard_clearing_worker_peak_rss_bytes"))
    assert float(peak.split()[-1]) > 0


def test_a_worker_that_cannot_clear_is_a_worker_failure_and_the_switch_goes_on(tmp_path):
    """The worker's own failure (here: no store where the configuration says) comes back as
    WorkerFailed (a 503 problem document on the API), never as the journal's fault."""
    import asyncio
    from types import SimpleNamespace

    from onecard.switch.clearing.worker import WorkerFailed

    config = _config()
    config.data_dir = str(tmp_path / "nowhere")
    config.store = SimpleNamespace(backend="sqlite", dsn="")
    state = SimpleNamespace(cards=np.zeros(0, dtype=[("pan", "u8"), ("region", "i8")]))
    service = ClearingService(config, SimpleNamespace(durable_no=0), state)
    with pytest.raises(WorkerFailed, match="clearing 2026-11-30"):
        asyncio.run(service.exceptions(dt.date(2026, 11, 30)))
    assert service.computations == 1 and service.failures == 0     # a list, not a run
