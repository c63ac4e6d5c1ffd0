"""Structured logs (issue 17, docs/operations.md "Logs"): one line per event, text or JSON
with a level and a stable event name; no full card number, identity number or key."""

import json
import logging
import shutil
import stat

import pytest

from onecard.switch import logs
from onecard.switch.security import first_tokens

from conftest import TOKENS, AdminClient, Supply, start_switch


def record(msg: str, *args, event: str | None = None, **fields) -> logging.LogRecord:
    r = logging.LogRecord("onecard.test", logging.INFO, __file__, 1, msg, args, None)
    if event is not None:
        r.event, r.fields = event, fields
    return r


def test_card_identity_numbers_and_keys_are_masked():
    text = ("card 6231310000000000011 id 31010119800101123X key "
            "00112233445566778899aabbccddeeff stan 000123 record 4521")
    assert logs.redact(text) == ("card 623131*********0011 id 310101********123X key [key] "
                                 "stan 000123 record 4521")


def test_json_lines_carry_level_event_and_fields_and_are_masked():
    line = logs.JsonFormatter().format(record("topped up %s", "6231310000000000011",
                                              event="operator_action", operator="alice",
                                              target="6231310000000000011"))
    doc = json.loads(line)
    assert (doc["level"], doc["event"], doc["logger"], doc["operator"]) == (
        "info", "operator_action", "onecard.test", "alice")
    assert "6231310000000000011" not in line and doc["target"] == "623131*********0011"
    assert doc["ts"].endswith("+00:00")


def test_text_lines_name_the_event_and_an_undeclared_event_is_a_bug():
    line = logs.TextFormatter().format(record("ready", event="ready", http_port=8580))
    assert " INFO onecard.test ready: ready http_port=8580" in line
    assert " log:" not in logs.TextFormatter().format(record("plain"))
    with pytest.raises(AssertionError, match="not declared"):
        logs.extra("no_such_event")


def test_a_json_switch_logs_its_events_and_never_a_card_number(demo_dir, terminals, tmp_path):
    path = tmp_path / "data"
    shutil.copytree(demo_dir, path)
    config = tmp_path / "json.toml"
    config.write_text('[log]\nformat = "json"\n[server]\nlatency_budget_ms = 0\n')
    pan = Supply(demo_dir, terminals).card()
    sw = start_switch(path, "--config", str(config))
    try:
        # The first start's tokens came from their 0600 file (stdout is a pipe) and work.
        token_file = path / first_tokens.FILE_NAME
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        tokens = TOKENS[str(path)]
        assert set(tokens) >= {"ops", "finance", "card", "catalogue"}
        r = AdminClient(sw).post(f"/admin/cards/{pan}/topup", {"amount_fen": 500},
                                 role="finance")
        assert r.status == 200, r.text
        assert AdminClient(sw).get("/admin/audit?limit=1", role="ops").status == 200
    finally:
        assert sw.stop() == 0
    text = sw.text()
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    for name in ("start", "recovered", "ready", "operator_action", "stop"):
        assert name in names, names
    assert all(e["event"] in logs.EVENTS and e["level"] for e in events)
    action = next(e for e in events if e["event"] == "operator_action")
    assert action["action"] == "card.topup" and action["record"] is not None
    assert pan not in text
    # Neither the JSON log nor stdout (a pipe, not a terminal) holds a token; stdout names
    # the file.
    assert not any(token in text for token in tokens.values())
    assert f"operator tokens in {token_file} " in text
