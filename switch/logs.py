"""Structured logs (issue 17, docs/operations.md "Logs"): one line per event, readable text by
default or one JSON object per line (``[log] format = "json"``) for a collector, each with a
level and a stable event name. Nothing a log line says may hold a full card number, identity
number or key: the formatter masks anything shaped like one before the line is written, as a
last guard behind the callers' own masking.

The standard library's ``logging`` carries the events (every module already logs through
it); the formatters here are the only thing hand-written, because a JSON formatter is a few
lines and the masking must be ours either way.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Final

# Stable event names: dashboards and alerting on logs match these, so they are declared once
# and a caller naming another is a bug (checked when the line is formatted).
EVENTS: Final[dict[str, str]] = {
    "start": "the switch is starting: configuration read, data set opened",
    "recovered": "state recovered: checkpoint loaded and the journal replayed",
    "ready": "listeners open: the switch takes traffic",
    "stop": "the switch stopped",
    "connection_refused": "terminal connections closed at once by a connection cap",
    "connection_closed": "terminal connections closed for idling, half frames or oversize",
    "commit_failed": "a journal commit failed: no reply after it is released",
    "journal_unwritable": "commits fail for lack of space (retried; requests refused 96)",
    "journal_writable": "commits succeed again after lack of space",
    "checkpoint": "a checkpoint was written (or failed)",
    "operator_action": "an operator changed something through the admin API",
    "clearing": "a settlement date was cleared",
    "holder_refused": "lodging verifications answered 96: a holders block did not open",
    "log": "any other line (no event name given)",
}

# A card number (12-19 digits), an identity number (17 digits and a check character) or a key
# (32 or more hex digits), not part of a longer run of digits or letters.
_CARD = re.compile(r"(?<![0-9])([0-9]{6})([0-9]{2,9})([0-9]{4})(?![0-9])")
_ID = re.compile(r"(?<![0-9A-Za-z])([0-9]{6})[0-9]{8}([0-9]{3}[0-9Xx])(?![0-9A-Za-z])")
_KEY = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{32,}(?![0-9A-Fa-f])")


def redact(text: str) -> str:
    """Mask card numbers (first six and last four digits stay), identity numbers (birth date
    hidden) and anything that looks like a key."""
    text = _KEY.sub("[key]", text)
    text = _ID.sub(lambda m: f"{m.group(1)}********{m.group(2)}", text)
    return _CARD.sub(lambda m: f"{m.group(1)}{'*' * len(m.group(2))}{m.group(3)}", text)


def event_of(record: logging.LogRecord) -> str:
    name = getattr(record, "event", "log")
    assert name in EVENTS, f"log event {name!r} is not declared in switch/logs.py EVENTS"
    return name


def _when(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "event", "logger", "msg"} plus the call's ``fields`` and, for an
    exception, its text; one object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": _when(record), "level": record.levelname.lower(),
               "event": event_of(record), "logger": record.name,
               "msg": redact(record.getMessage())}
        for key, value in (getattr(record, "fields", None) or {}).items():
            out.setdefault(key, redact(value) if isinstance(value, str) else value)
        if record.exc_info:
            out["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``2026-12-02T15:04:05.123+00:00 INFO onecard.server ready: message key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        name = event_of(record)
        fields = getattr(record, "fields", None) or {}
        tail = "".join(f" {k}={v}" for k, v in fields.items())
        line = (f"{_when(record)} {record.levelname} {record.name}"
                f"{'' if name == 'log' else ' ' + name}: {record.getMessage()}{tail}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def configure(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` ("text" or "json"), replacing any handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def extra(event: str, **fields: object) -> dict:
    """``extra=`` for a logging call: its event name and structured fields."""
    assert event in EVENTS, f"log event {event!r} is not declared in switch/logs.py EVENTS"
    return {"event": event, "fields": fields}
