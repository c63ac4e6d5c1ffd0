"""Configuration: one TOML file, every key optional, decoded and validated with msgspec.

A key the schema does not know, or a value outside its bounds, stops start-up with msgspec's
message, which names the key (``Object contains unknown field `prot` - at `$.server```). A key
renamed since (see RENAMED_KEYS) still loads, with one warning naming its new name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

log = logging.getLogger("onecard.config")

Port = Annotated[int, Meta(ge=0, le=65535)]
Positive = Annotated[int, Meta(gt=0)]


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    iso8583_port: Port = 8583
    native_port: Port = 8584
    http_port: Port = 8580
    iso8583_frame_bytes_max: Annotated[int, Meta(ge=21, le=65535)] = 8192
    native_frame_bytes_max: Annotated[int, Meta(ge=16, le=64 << 20)] = 1 << 20
    native_batch_max: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    # Replies waiting for the journal before a connection stops being read (backpressure).
    waiting_batches_max: Annotated[int, Meta(ge=16)] = 100_000
    write_buffer_high_bytes: Annotated[int, Meta(ge=4096)] = 4 << 20
    # A connection that sends nothing for idle_timeout_s is closed (terminals heartbeat every
    # minute or so); one that stops halfway through a frame, after partial_frame_timeout_s,
    # so that a half-sent frame cannot hold a socket for ever. 0 disables either.
    idle_timeout_s: Annotated[int, Meta(ge=0, le=86_400)] = 900
    partial_frame_timeout_s: Annotated[int, Meta(ge=0, le=3_600)] = 30


class StoreConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    backend: Literal["sqlite"] = "sqlite"
    # FULL: every group commit is fsynced before its replies leave. Lower only for experiments.
    synchronous: Literal["FULL", "NORMAL", "OFF"] = "FULL"
    checkpoint_interval_s: Annotated[float, Meta(ge=1)] = 300.0
    checkpoint_records: Positive = 2_000_000
    snapshots_kept: Annotated[int, Meta(ge=1, le=100)] = 2
    # The WAL is copied into the database (in the background) once it holds this much; it is
    # then written from its start again (bench/README.md: 4, 16 and 64 measured within noise
    # of each other once GC pauses were out of the open-loop figures).
    wal_checkpoint_mb: Annotated[int, Meta(ge=1, le=65536)] = 16


class LimitsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    daily_limit_fen: Positive = 500_000
    amount_fen_max: Positive = 10_000_000
    topup_fen_max: Positive = 100_000        # cash paid in at a kiosk, per top-up


class FxConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Hong Kong and Macao acquiring: fen per 100.00 units of the currency."""

    HKD: Annotated[int, Meta(gt=0, le=10_000_000)] = 9_150
    MOP: Annotated[int, Meta(gt=0, le=10_000_000)] = 8_880

    def rates(self) -> dict[int, int]:
        return {344: self.HKD, 446: self.MOP}


class AdminConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Operator tokens and roles; created with one operator per role on first start (0600).
    tokens_file: str = "admin-tokens.toml"
    # Items per POST: a batch is validated and recorded on the event loop that also serves
    # the terminals, so a bigger one would stall them (onecard disburse sends 10,000 a time).
    disbursement_items_max: Annotated[int, Meta(ge=1, le=10_000_000)] = 100_000


class SecurityConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # The key-encryption key (64 hex digits) that wraps the data set's data key. It must be
    # outside the data directory, so that a copy of the directory alone reads nothing. Empty:
    # <data_dir>.kek beside the data directory, created (0600) with the data set.
    # $ONECARD_KEK (64 hex digits), when set, is used instead of any file.
    kek_file: str = ""


class CoreConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Retransmissions and reversals are matched against the last ring_size requests of each
    # terminal; a power of two, at least the deepest pipelining window a terminal uses.
    ring_size: Annotated[int, Meta(ge=8, le=65536)] = 64
    # Entries at most in each map of state only some accounts have (daily totals per
    # application, medical year totals); a request that would add one past it is declined 96.
    map_entries_max: Annotated[int, Meta(ge=16, le=1 << 40)] = 1 << 26
    # How long the writer thread may wait for the GIL (Python's default is 5 ms, which would
    # sit on every commit under load).
    gil_switch_interval_us: Annotated[int, Meta(ge=10, le=5000)] = 100

    def __post_init__(self) -> None:
        if self.ring_size & (self.ring_size - 1):
            raise ValueError(f"core.ring_size must be a power of two, got {self.ring_size}")


class DemoConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    cards: Annotated[int, Meta(ge=1000, le=200_000_000)] = 100_000
    seed: int = 20241101


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    data_dir: str = "onecard-data"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    fx: FxConfig = msgspec.field(default_factory=FxConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    core: CoreConfig = msgspec.field(default_factory=CoreConfig)
    demo: DemoConfig = msgspec.field(default_factory=DemoConfig)


class ConfigError(Exception):
    """Start-up must stop: the message names the file and the key."""


# Keys renamed to put the qualifier last (TIGER_STYLE: ``native_batch_max``, not
# ``max_native_batch``). Files written for an earlier version keep working.
RENAMED_KEYS: Final[dict[tuple[str, str], str]] = {
    ("server", "max_iso8583_frame_bytes"): "iso8583_frame_bytes_max",
    ("server", "max_native_frame_bytes"): "native_frame_bytes_max",
    ("server", "max_native_batch"): "native_batch_max",
    ("server", "max_waiting_batches"): "waiting_batches_max",
    ("limits", "max_amount_fen"): "amount_fen_max",
    ("limits", "max_topup_fen"): "topup_fen_max",
    ("admin", "max_disbursement_items"): "disbursement_items_max",
}


def _rename_old_keys(data: dict, path: Path) -> None:
    """Move each renamed key of a decoded file to its new name, warning once per key."""
    for (section, old), new in RENAMED_KEYS.items():
        table = data.get(section)
        if not isinstance(table, dict) or old not in table:
            continue
        if new in table:
            raise ConfigError(f"config file {path}: [{section}] sets both {old} and {new} "
                              f"(the same key; keep {new})")
        table[new] = table.pop(old)
        log.warning("config file %s: [%s] %s is now called %s (the old name still works)",
                    path, section, old, new)


def load(path: str | Path | None) -> Config:
    """Read a TOML configuration file; None gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = msgspec.toml.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    _rename_old_keys(data, path)
    try:
        return msgspec.convert(data, type=Config)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc


def with_overrides(config: Config, **changes: object) -> Config:
    """Apply command-line overrides like ``server.host`` (None values are ignored) and
    validate the result the same way a file is validated."""
    data = msgspec.to_builtins(config)
    for dotted, value in changes.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    try:
        return msgspec.convert(data, type=Config)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"command-line option: {exc}") from exc
