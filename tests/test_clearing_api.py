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


def today() -> dt.date:
    now_us = np.array([time.time_ns() // 1000])
    return clearing.day_date(clearing.settlement_days(now_us, 23 * 60)[0])


def test_a_date_is_cleared_through_the_api_with_its_files(sw, demo_dir, terminals, tmp_path):
    supply = Supply(demo_dir, terminals)
    info = supply.terminal("FIN-PAY")
    sock, t = iso_session(sw, info)
    try:
        replies = t.send(t.purchase(supply.card(), 20_000), t.purchase(supply.card(), 300))
    finally:
        sock.close()
    assert [r["39"] for r in replies] == ["00", "00"]
    api = AdminClient(sw)
    date = today().isoformat()
    r = api.post(f"/admin/clearing/{date}", role="finance")
    assert r.status == 200, r.text
    day = r.json()
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
    from types import SimpleNamespace

    service = ClearingService(SimpleNamespace(config=_config()))
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
