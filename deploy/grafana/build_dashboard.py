"""Writes ``deploy/grafana/onecard.json``, the Grafana dashboard (issue 17), from the table
below: one row per concern, each panel with its queries and unit. The JSON is what operators
import (Dashboards -> New -> Import; choose the Prometheus data source for the
``datasource`` variable); this table is where it is changed, and tests/test_ops.py checks
the JSON is this table's and runs every query against a real Prometheus.

    python deploy/grafana/build_dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

OUT = Path(__file__).with_name("onecard.json")
SEL = 'instance=~"$instance"'                         # every query: the instances chosen
R = "$__rate_interval"


class Panel(NamedTuple):
    title: str
    unit: str                      # Grafana unit id
    targets: tuple[tuple[str, str], ...]   # (legend, PromQL)
    description: str = ""
    kind: str = "timeseries"


def q(p: float, metric: str, by: str = "") -> str:
    keys = f"le{', ' + by if by else ''}"
    return f"histogram_quantile({p}, sum by ({keys}) (rate({metric}_bucket{{{SEL}}}[{R}])))"


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Traffic", (
        Panel("Requests per second by protocol and type", "reqps", (
            ("{{protocol}} {{type}}",
             f"sum by (protocol, type) (rate(onecard_requests_total{{{SEL}}}[{R}]))"),)),
        Panel("Approval rate", "percentunit", (
            ("approved", f'sum(rate(onecard_requests_total{{{SEL}, code="00"}}[{R}])) / '
                         f"sum(rate(onecard_requests_total{{{SEL}}}[{R}]))"),),
              "Share of requests answered 00 (all kinds: balance inquiries and identity checks "
              "included)"),
        Panel("Result codes per second", "reqps", (
            ("{{code}}", f"sum by (code) (rate(onecard_requests_total{{{SEL}}}[{R}]))"),),
              "protocols/codes.py: 51 insufficient funds, A0 MAC failure, 91 issuer "
              "unavailable, 96 switch fault or shedding"),
    )),
    ("Latency", (
        Panel("Request latency p50 / p99 / p99.9", "s", (
            ("p50", q(0.5, "onecard_request_latency_seconds")),
            ("p99", q(0.99, "onecard_request_latency_seconds")),
            ("p99.9", q(0.999, "onecard_request_latency_seconds"))),
              "From receiving a request to writing its reply (after its journal record is "
              "durable); target p99 under 1 ms"),
        Panel("Request latency p99 by protocol and type", "s", (
            ("{{protocol}} {{type}}", q(0.99, "onecard_request_latency_seconds",
                                        "protocol, type")),)),
        Panel("Messages per batch", "short", (
            ("mean", f"sum(rate(onecard_batch_messages_sum{{{SEL}}}[{R}])) / "
                     f"sum(rate(onecard_batch_messages_count{{{SEL}}}[{R}]))"),),
              "Requests decided per call into the core"),
    )),
    ("Journal and group commit", (
        Panel("Group commit latency p50 / p99", "s", (
            ("p50", q(0.5, "onecard_commit_latency_seconds")),
            ("p99", q(0.99, "onecard_commit_latency_seconds"))),
              "One commit of a group of journal records, fsync (or the PostgreSQL commit) "
              "included"),
        Panel("Records per commit", "short", (
            ("mean", f"sum(rate(onecard_commit_records_sum{{{SEL}}}[{R}])) / "
                     f"sum(rate(onecard_commit_records_count{{{SEL}}}[{R}]))"),)),
        Panel("Durable records per second", "ops", (
            ("{{instance}}", f"rate(onecard_journal_records_durable_total{{{SEL}}}[{R}])"),)),
        Panel("Journal writable, records pending", "short", (
            ("writable {{instance}}", f"onecard_journal_writable{{{SEL}}}"),
            ("pending {{instance}}", f"onecard_journal_pending_records{{{SEL}}}"))),
    )),
    ("Connections and backpressure", (
        Panel("Open connections", "short", (
            ("{{protocol}}", f"sum by (protocol) (onecard_connections{{{SEL}}})"),
            ("limit", f"sum(onecard_connections_max{{{SEL}}})"))),
        Panel("Paused connections, waiting reply batches", "short", (
            ("paused {{instance}}", f"onecard_connections_paused{{{SEL}}}"),
            ("waiting batches {{instance}}", f"onecard_replies_waiting{{{SEL}}}"))),
        Panel("Admission delay and shedding", "s", (
            ("delay {{instance}}", f"onecard_admission_delay_seconds{{{SEL}}}"),
            ("shedding {{instance}}", f"onecard_shedding{{{SEL}}}"))),
        Panel("Refused connections and shed requests per second", "ops", (
            ("refused {{reason}}",
             f"sum by (reason) (rate(onecard_connections_refused_total{{{SEL}}}[{R}]))"),
            ("shed {{reason}}",
             f"sum by (reason) (rate(onecard_requests_shed_total{{{SEL}}}[{R}]))"))),
    )),
    ("Checkpoints, recovery, disk", (
        Panel("Time since the last checkpoint", "s", (
            ("{{instance}}", f"(time() - onecard_checkpoint_last_timestamp_seconds{{{SEL}}}) "
                             f"and onecard_checkpoint_last_timestamp_seconds{{{SEL}}} > 0"),)),
        Panel("Checkpoint duration, failures", "s", (
            ("duration {{instance}}", f"onecard_checkpoint_last_duration_seconds{{{SEL}}}"),
            ("failed (1 h) {{instance}}",
             f"increase(onecard_checkpoints_failed_total{{{SEL}}}[1h])"))),
        Panel("Last recovery", "s", (
            ("seconds {{instance}}", f"onecard_recovery_seconds{{{SEL}}}"),),
              "Checkpoint load plus journal replay at the last start"),
        Panel("Data disk free", "percentunit", (
            ("{{instance}}", f"onecard_data_disk_free_bytes{{{SEL}}} / "
                             f"onecard_data_disk_size_bytes{{{SEL}}}"),)),
    )),
    ("PostgreSQL and failover", (
        Panel("Replication lag (bytes)", "bytes", (
            ("{{standby}} ({{sync_state}})",
             f"max by (standby, sync_state) (onecard_pg_replication_lag_bytes{{{SEL}}})"),)),
        Panel("Replication lag (seconds)", "s", (
            ("{{standby}}", f"max by (standby) (onecard_pg_replication_lag_seconds{{{SEL}}})"),)),
        Panel("Standbys by state", "short", (
            ("{{sync_state}}", f"sum by (sync_state) (onecard_pg_standbys{{{SEL}}})"),),
              "sync/quorum: commits wait for them; 0 of those with "
              "require_sync_standby stops commits"),
        Panel("Lease epoch and commits resolved", "short", (
            ("lease epoch {{instance}}", f"onecard_pg_lease_epoch{{{SEL}}}"),
            ("resolving {{instance}}", f"onecard_pg_commits_resolving{{{SEL}}}"),
            ("resolved (1 h) {{instance}}",
             f"increase(onecard_pg_commits_resolved_total{{{SEL}}}[1h])")),
              "The epoch rises when a switch takes the store over; resolved commits lost "
              "their connection (failover)"),
    )),
    ("Regions", (
        Panel("Forwarded requests per second by issuer province and who decided", "reqps", (
            ("{{province}} {{origin}}", f"sum by (province, origin) "
                                        f"(rate(onecard_forwarded_requests_total{{{SEL}}}[{R}]))"),),
              "origin: issuer (decided there), stand_in (decided here), unavailable (91)"),
        Panel("Forwarding round trip p99 by destination", "s", (
            ("{{destination}}", q(0.99, "onecard_forward_latency_seconds", "destination")),)),
        Panel("Served for other regions, failed batches", "ops", (
            ("served {{instance}}", f"rate(onecard_forwarded_served_requests_total{{{SEL}}}"
                                    f"[{R}])"),
            ("failed {{destination}}", f"sum by (destination) "
                                       f"(rate(onecard_forward_batches_failed_total{{{SEL}}}"
                                       f"[{R}]))"))),
    )),
    ("Clearing", (
        Panel("Last clearing run", "short", (
            ("records", f"onecard_clearing_last_records{{{SEL}}}"),
            ("parties", f"onecard_clearing_last_parties{{{SEL}}}"),
            ("open exceptions", f"onecard_clearing_last_exceptions{{{SEL}}}"))),
        Panel("Clearing run duration", "s", (
            ("{{instance}}", f"onecard_clearing_last_duration_seconds{{{SEL}}}"),)),
        Panel("Clearing runs and failures (1 day)", "short", (
            ("runs", f"sum(increase(onecard_clearing_runs_total{{{SEL}}}[1d]))"),
            ("failures", f"sum(increase(onecard_clearing_failures_total{{{SEL}}}[1d]))"))),
    )),
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 24


def _panel(p: Panel, pid: int, x: int, y: int, w: int) -> dict:
    return {
        "id": pid, "type": p.kind, "title": p.title, "description": p.description,
        "datasource": DATASOURCE, "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [{"datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
                     "refId": chr(ord("A") + i)} for i, (legend, expr) in enumerate(p.targets)],
    }


def dashboard() -> dict:
    panels, pid, y = [], 1, 0
    for title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        w = WIDTH // len(row) if len(row) <= 4 else WIDTH // 4
        for i, p in enumerate(row):
            panels.append(_panel(p, pid, (i * w) % WIDTH, y + (i * w) // WIDTH * 8, w))
            pid += 1
        y += ((len(row) * w - 1) // WIDTH + 1) * 8
    return {
        "title": "onecard switch", "uid": "onecard-switch", "tags": ["onecard"],
        "description": "Traffic, latency, journal, backpressure, checkpoints, PostgreSQL, "
                       "regions and clearing of onecard switches (docs/operations.md)",
        "editable": True, "schemaVersion": 39, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"}, "timezone": "browser",
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0},
            {"name": "instance", "label": "Switch", "type": "query", "datasource": DATASOURCE,
             "query": {"query": "label_values(onecard_ready, instance)", "refId": "instance"},
             "definition": "label_values(onecard_ready, instance)", "refresh": 2,
             "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "hide": 0},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
