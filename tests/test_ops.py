"""What the operations team installs (issue 17), tested against the real thing: Debian's
Prometheus scrapes two regional switches (NATS between them) on a PostgreSQL primary with a
streaming synchronous standby, under a short load; every query of the Grafana dashboard and
every alert expression is evaluated through Prometheus' HTTP API and must answer with
series; ``promtool check rules`` passes; stopping a switch fires OnecardDown.

An alert expression filters (``x > 0.9``): healthy, it returns nothing. Each is evaluated
with its comparisons made ``bool`` (``x > bool 0.9``), which keeps every series with 0 or 1:
what is checked is that the metrics and labels it reads exist."""

import contextlib
import datetime as dt
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from onecard.bench import pg_local
from onecard.protocols import clearing

from conftest import AdminClient, start_switch, store_config
from test_region_forward import HOME, JS, Regions, card_of, pos

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "onecard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
READY_S = 60.0
SCRAPE_S = 1


def _get(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class Prometheus:
    def __init__(self, root: Path, targets: list[str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("no prometheus (.ci/run installs Debian's prometheus)")
        self.port = pg_local.free_port()
        config = root / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "onecard",
                                "static_configs": [{"targets": targets}]}]}))
        self.log = (root / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return _get(f"{self.url}/api/v1/{path}{query}")

    def wait(self, predicate, what: str, timeout_s: float = READY_S):
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                last = predicate()
                if last:
                    return last
            time.sleep(0.5)
        raise AssertionError(f"prometheus: {what} not seen in {timeout_s:.0f} s ({last!r})")

    def query(self, expr: str) -> list:
        doc = self.api("query", query=expr)
        assert doc["status"] == "success", (expr, doc)
        return doc["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


class OpsRegions(Regions):
    """Regions whose switches checkpoint every second (the checkpoint panels need one)."""

    def config(self, name: str, timeout_ms: int = 2000, nodes=None) -> str:
        path = Path(super().config(name, timeout_ms, nodes))
        text = path.read_text()
        store = store_config(self.dirs[name])
        path.write_text(text.replace(store, store + "checkpoint_interval_s = 1\n", 1))
        return str(path)


def _load(regions) -> None:
    """Purchases at a Shanghai POS: local cards, Jiangsu cards (forwarded), one declined."""
    t = pos(regions)
    js_pan, _ = card_of(regions.dirs["js"], JS)
    sh_pan, _ = card_of(regions.dirs["sh"], HOME)
    for _ in range(20):
        replies = t.send(t.purchase(sh_pan, 100), t.purchase(js_pan, 50),
                         t.purchase(sh_pan, 10**11))                # 13: too large
        assert [r["39"] for r in replies] == ["00", "00", "13"]


@pytest.fixture(scope="module")
def ops(demo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ops")
    pytest.importorskip("psycopg")
    if pg_local.bin_dir() is None:
        pytest.skip("no PostgreSQL server installed (.ci/run installs Debian's postgresql)")
    pair = pg_local.start_pair()
    regions = prom = None
    try:
        regions = OpsRegions(root, demo_dir, pair)
        regions.start("js")
        regions.start("sh")
        _load(regions)
        AdminClient(regions.switches["sh"]).post(
            f"/admin/clearing/{dt.datetime.now(clearing.CST).date()}", role="finance")
        targets = [f"127.0.0.1:{regions.switches[n].http}" for n in ("sh", "js")]
        prom = Prometheus(root, targets)
        prom.wait(lambda: [t for t in prom.api("targets")["data"]["activeTargets"]
                           if t["health"] == "up"] and all(
            t["health"] == "up" for t in prom.api("targets")["data"]["activeTargets"]),
            "both switches up")
        _load(regions)                       # traffic between scrapes: rates are not zero
        prom.wait(lambda: prom.query("onecard_pg_standbys") and prom.query(
            "count_over_time(onecard_ready[1m]) >= 5"), "five scrapes")
        yield regions, prom
    finally:
        if prom is not None:
            prom.stop()
        if regions is not None:
            regions.close()
        pair.stop()


def dashboard_queries() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]


def as_run(expr: str) -> str:
    """A dashboard query as Grafana sends it: every instance, a rate window."""
    return expr.replace("$instance", ".*").replace("$__rate_interval", "10s")


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def as_bool(expr: str) -> str:
    return re.sub(r"(==|!=|>=|<=|>|<)(?!\s*bool)(?=\s)", r"\1 bool", expr)


def test_the_dashboard_json_is_the_table_it_is_built_from():
    import runpy

    built = runpy.run_path(str(ROOT / "deploy" / "grafana" / "build_dashboard.py"),
                           run_name="not_main")["render"]()
    assert DASHBOARD.read_text() == built, "run python deploy/grafana/build_dashboard.py"
    doc = json.loads(built)
    names = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "instance"} <= names               # the data source is a variable
    for p in doc["panels"]:
        if p["type"] != "row":
            assert p["targets"] and p["fieldConfig"]["defaults"]["unit"], p["title"]
            assert p["datasource"]["uid"] == "${datasource}"


def test_every_dashboard_query_returns_series(ops):
    _, prom = ops
    empty = [(title, expr) for title, expr in dashboard_queries()
             if not prom.query(as_run(expr))]
    assert not empty, f"queries with no series: {empty}"


def test_every_alert_expression_evaluates_on_real_series(ops):
    _, prom = ops
    empty = [r["alert"] for r in alert_rules() if not prom.query(as_bool(r["expr"]))]
    assert not empty, f"alert expressions reading no series: {empty}"
    rules = prom.api("rules")["data"]["groups"]
    loaded = {r["name"]: r for g in rules for r in g["rules"]}
    assert set(loaded) == {r["alert"] for r in alert_rules()}
    assert all(r["health"] == "ok" for r in loaded.values()), loaded


def test_promtool_accepts_the_rules_and_each_has_a_runbook_anchor():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (.ci/run installs Debian's prometheus)")
    out = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    headings = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), re.M)}
    for rule in alert_rules():
        a = rule["annotations"]
        assert a["summary"] and rule["labels"]["severity"] in ("critical", "warning", "info")
        page, _, anchor = a["runbook_url"].partition("#")
        assert page == "docs/operations.md" and anchor in headings, rule["alert"]


def test_stopping_a_switch_fires_onecard_down(ops):
    regions, prom = ops
    port = regions.switches["js"].http
    regions.stop("js")

    def down():
        alerts = prom.api("alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "OnecardDown"
                and a["state"] in ("pending", "firing")]

    (alert,) = prom.wait(down, "OnecardDown pending")
    assert alert["labels"]["instance"] == f"127.0.0.1:{port}"


def test_a_standalone_switch_serves_health_and_readiness(demo_dir, tmp_path):
    shutil.copytree(demo_dir, tmp_path / "data")
    sw = start_switch(tmp_path / "data")
    try:
        health = _get(f"http://127.0.0.1:{sw.http}/healthz")
        ready = _get(f"http://127.0.0.1:{sw.http}/readyz")
        assert health["status"] == "ok" and ready == {"ready": True, "detail": "ok"}
    finally:
        sw.stop()


def test_the_deploy_files_are_what_the_runbook_installs(tmp_path):
    import configparser

    from onecard.switch import config

    cfg = config.load(ROOT / "deploy" / "onecard.toml")          # every key known and valid
    assert cfg.log.format == "json" and cfg.security.kek_file.startswith("/etc/onecard/")
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "deploy" / "systemd" / "onecard.service")
    service = unit["Service"]
    assert service["ExecStart"].endswith("onecard serve --config /etc/onecard/onecard.toml")
    assert service["User"] == "onecard" and service["KillSignal"] == "SIGTERM"
    assert cfg.data_dir.startswith(service["ReadWritePaths"])
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (.ci/run installs Debian's prometheus)")
    conf = tmp_path / "prometheus.yml"
    conf.write_text((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text().replace(
        "/etc/prometheus/onecard-alerts.yml", str(ALERTS)))
    out = subprocess.run([promtool, "check", "config", str(conf)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert yaml.safe_load(conf.read_text())["scrape_configs"][0]["job_name"] == "onecard"


def test_the_replication_monitor_sees_a_primary_and_an_unreachable_one(pg_server):
    """The thread behind the replication panels, the standby alerts and /readyz."""
    from onecard.switch.store.pg.replication import UNREACHABLE_POLLS, ReplicationMonitor

    up = ReplicationMonitor(pg_server.dsn, poll_s=0.05)
    down = ReplicationMonitor("host=127.0.0.1 port=1 dbname=x user=x connect_timeout=1",
                              poll_s=0.05)
    up.start()
    down.start()
    try:
        assert up.wait_first(10) and up.standbys == () and not up.unreachable()
        deadline = time.monotonic() + 30
        while down.failing < UNREACHABLE_POLLS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert down.unreachable() and not down.ok
    finally:
        up.stop()
        down.stop()
        up.join(10)
        down.join(10)
