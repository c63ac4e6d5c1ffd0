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

from onecard.protocols import clearing, forward
from onecard.switch.errors import ConfigError

log = logging.getLogger("onecard.config")

Port = Annotated[int, Meta(ge=0, le=65535)]
Positive = Annotated[int, Meta(gt=0)]


class TlsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """TLS for a listener (switch/tls.py); off while cert_file is empty. Paths as given
    (relative to the working directory), PEM files."""

    cert_file: str = ""              # the server's certificate (chain, leaf first)
    key_file: str = ""               # its private key
    # Client certificates: verified against this CA bundle when one is presented; with
    # client_cert_required, a client without a valid one is refused during the handshake.
    client_ca_file: str = ""
    client_cert_required: bool = False

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("tls: cert_file and key_file go together")
        if self.client_ca_file and not self.cert_file:
            raise ValueError("tls: client_ca_file needs cert_file and key_file")
        if self.client_cert_required and not self.client_ca_file:
            raise ValueError("tls: client_cert_required needs client_ca_file")

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


class TerminalTlsConfig(TlsConfig, kw_only=True):
    """Terminal links over TLS, on ports of their own beside the plain ones (which stay as
    configured: terminals on a private network keep plain TCP)."""

    iso8583_port: Annotated[int, Meta(ge=0, le=65535)] = 8593
    native_port: Annotated[int, Meta(ge=0, le=65535)] = 8594
    # false: with TLS on, the plain terminal ports are not opened at all.
    plain_listeners: bool = True


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Terminal listeners bind here (the admin and metrics port binds admin.host); the key
    # was called host when one address served both.
    terminal_host: str = "127.0.0.1"
    tls: TerminalTlsConfig = msgspec.field(default_factory=TerminalTlsConfig)
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
    # Load shedding (switch/admission.py): when the work waiting in the switch (event-loop
    # lag plus the oldest reply's wait for the journal) exceeds this, new requests are
    # answered 96 at once instead of queueing. 0 disables shedding.
    latency_budget_ms: Annotated[int, Meta(ge=0, le=60_000)] = 50
    # Terminal connections per listener and per peer address; beyond either, or when fewer
    # than fd_reserve descriptors would be left (for the admin/metrics port, the journal and
    # checkpoints), a new connection is closed at once, counted and logged (rate-limited).
    # Per peer, 0 (the default) is a quarter of the connections this process can hold (the
    # smaller of connections_max and what the open-files limit leaves): one address, however
    # busy, never takes them all. A terminal gateway or NAT that carries a whole fleet behind
    # one address needs it set (docs/operations.md "Connection limits").
    connections_max: Annotated[int, Meta(ge=1, le=10_000_000)] = 100_000
    connections_per_peer_max: Annotated[int, Meta(ge=0, le=10_000_000)] = 0
    fd_reserve: Annotated[int, Meta(ge=16, le=1_000_000)] = 128
    # Bytes of partial frames all connections together may hold; over it, the connection
    # holding the most is closed (400 slow senders x 1 MiB took 350 MB before).
    partial_bytes_max: Annotated[int, Meta(ge=65536, le=1 << 40)] = 64 << 20
    # Largest frame a native connection may send before one of its frames passed a MAC check
    # (a sign-on, a heartbeat or a signed-on terminal's request): unauthenticated peers get
    # this much buffer, not native_frame_bytes_max.
    native_first_frame_bytes_max: Annotated[int, Meta(ge=64, le=64 << 20)] = 64 << 10


class StoreConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # "sqlite": the embedded store in data_dir. "postgresql": the PostgreSQL store at dsn
    # (docs/postgresql.md): fill it with onecard db migrate and onecard db import.
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    # libpq connection string for backend = "postgresql" and onecard db, e.g.
    # "host=pg1,pg2,pg3 port=5432 dbname=onecard user=onecard target_session_attrs=read-write"
    # (a password belongs in ~/.pgpass or $PGPASSWORD, not in this file).
    dsn: str = ""
    # PostgreSQL: refuse to start unless the primary waits for a synchronous standby on every
    # commit (an approval must survive the loss of the primary's machine). false only for a
    # single-node test store.
    require_sync_standby: bool = True
    # PostgreSQL: group commits on their way at once, each on its own connection (hides the
    # round trip to the standby; replies still leave in commit order).
    commits_in_flight: Annotated[int, Meta(ge=1, le=16)] = 2
    # PostgreSQL: a commit unanswered this long is cut and resolved on the (new) primary;
    # none found within failover_timeout_s stops the switch (no reply is ever guessed).
    commit_timeout_s: Annotated[float, Meta(gt=0, le=600)] = 10.0
    failover_timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 60.0
    # FULL: every group commit is fsynced before its replies leave. Lower only for experiments.
    synchronous: Literal["FULL", "NORMAL", "OFF"] = "FULL"
    checkpoint_interval_s: Annotated[float, Meta(ge=1)] = 300.0
    checkpoint_records: Positive = 2_000_000
    snapshots_kept: Annotated[int, Meta(ge=1, le=100)] = 2
    # The WAL is copied into the database (in the background) once it holds this much; it is
    # then written from its start again (bench/README.md: 4, 16 and 64 measured within noise
    # of each other once GC pauses were out of the open-loop figures).
    wal_checkpoint_mb: Annotated[int, Meta(ge=1, le=65536)] = 16
    # A commit that fails for lack of space (SQLITE_FULL, ENOSPC) keeps its records and is
    # retried this often; meanwhile requests are refused 96 and /readyz is not ready.
    full_retry_ms: Annotated[int, Meta(ge=10, le=600_000)] = 1000
    # Start-up refuses a data directory with less free space than this (and one where a
    # 1 MiB write with fsync fails).
    free_mb_min: Annotated[int, Meta(ge=0, le=1 << 30)] = 16

    def __post_init__(self) -> None:
        if self.backend == "postgresql" and not self.dsn:
            raise ValueError('store: backend = "postgresql" needs dsn (a libpq connection '
                             'string)')


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


# A disbursement item as the CLI sends it is ~57 bytes of JSON
# ({"card": "6213110000000000117", "amount_fen": 100000000}, ); the default body limit
# leaves room for the largest allowed batch and no more.
DISBURSEMENT_ITEM_BYTES = 64
BODY_OVERHEAD_BYTES = 64 << 10


class AdminConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # The admin API, /metrics and /healthz listen here (port: server.http_port). Loopback by
    # default: an operator network is a deliberate choice, ideally with tls below.
    host: str = "127.0.0.1"
    # Operator tokens and roles; created with one operator per role on first start (0600).
    tokens_file: str = "admin-tokens.toml"
    # Items per POST: a batch is validated and recorded on the event loop that also serves
    # the terminals, so a bigger one would stall them (onecard disburse sends 10,000 a time).
    disbursement_items_max: Annotated[int, Meta(ge=1, le=10_000_000)] = 100_000
    # Request bodies above this are refused 413 before they are read (by Content-Length, or
    # once that much has arrived). 0: room for disbursement_items_max items (6.2 MiB).
    body_bytes_max: Annotated[int, Meta(ge=0, le=1 << 30)] = 0
    # Wrong tokens from one peer address: this many a minute (a token bucket), then 429
    # with Retry-After until the bucket refills. Failures are logged once a minute per peer.
    token_failures_per_minute: Annotated[int, Meta(ge=1, le=100_000)] = 20
    tls: TlsConfig = msgspec.field(default_factory=TlsConfig)

    @property
    def body_limit_bytes(self) -> int:
        if self.body_bytes_max:
            return self.body_bytes_max
        return self.disbursement_items_max * DISBURSEMENT_ITEM_BYTES + BODY_OVERHEAD_BYTES


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
    # Behind the ring, every request stays findable by (terminal, STAN or sequence) for this
    # many settlement dates, the current one included (core/horizon.pyx): a retransmission
    # gets its original answer and a reversal finds its original, whatever came in between.
    # A reversal of a request older than that is refused 25 (protocols/ISO8583.md).
    idempotency_days: Annotated[int, Meta(ge=1, le=7)] = 2
    # Requests the horizon holds at most (about 56-64 bytes each); past it, a request that
    # would push one out of the ring is declined 96 (onecard_idempotency_requests shows it).
    idempotency_requests_max: Annotated[int, Meta(ge=1024, le=(1 << 32) - 2)] = 1 << 26
    # Entries at most in each map of state only some accounts have (daily totals per
    # application, medical year totals); a request that would add one past it is declined 96.
    map_entries_max: Annotated[int, Meta(ge=16, le=1 << 40)] = 1 << 26
    # Holder records (full name, identity number) stay sealed on disk; a lodging verification
    # opens the block of 4 that holds its record. At most this many bytes of opened blocks
    # are kept in memory, in clear (0: none, each block wiped once read): 1 MiB holds 21,840
    # holders whatever the number of cards (bench/README.md, "Holder records at rest").
    holder_cache_bytes: Annotated[int, Meta(ge=0, le=1 << 30)] = 1 << 20
    # How long the writer thread may wait for the GIL (Python's default is 5 ms, which would
    # sit on every commit under load).
    gil_switch_interval_us: Annotated[int, Meta(ge=10, le=5000)] = 100

    def __post_init__(self) -> None:
        if self.ring_size & (self.ring_size - 1):
            raise ValueError(f"core.ring_size must be a power of two, got {self.ring_size}")


class DemoConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    cards: Annotated[int, Meta(ge=1000, le=200_000_000)] = 100_000
    seed: int = 20241101


class RegionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # A regional switch (docs/regions.md): its name in the routing table and on NATS subjects.
    # Empty: the single switch that owns every province (nothing is forwarded, no NATS).
    name: Annotated[str, Meta(pattern=r"^([a-z][a-z0-9_-]{0,31})?$")] = ""
    # NATS servers (nats://host:port) the switch connects to; required with a name.
    nats_urls: list[str] = msgspec.field(default_factory=list)
    # How long the acquirer waits for the issuer's answer to a forwarded batch before it
    # answers 91 (issuer unavailable).
    timeout_ms: Annotated[int, Meta(ge=10, le=10_000)] = 150
    # Replicas of the routing table's key-value bucket when it is first created (1 or 3).
    routing_replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    # The stand-in limits this switch publishes for its own cards: what another region may
    # approve for one of them while this switch does not answer (transit taps and venue
    # entries only), per request and per card per day. 0: no stand-in for its cards.
    standin_per_txn_fen: Annotated[int, Meta(ge=0, le=forward.STAND_IN_FEN_MAX)] = \
        forward.STAND_IN_PER_TXN_FEN
    standin_per_day_fen: Annotated[int, Meta(ge=0, le=forward.STAND_IN_FEN_MAX)] = \
        forward.STAND_IN_PER_DAY_FEN

    def __post_init__(self) -> None:
        if self.standin_per_txn_fen > self.standin_per_day_fen:
            raise ValueError(f"region.standin_per_txn_fen ({self.standin_per_txn_fen}) is above "
                             f"region.standin_per_day_fen ({self.standin_per_day_fen})")
        if self.name and not self.nats_urls:
            raise ValueError(f"region.name = {self.name!r} needs region.nats_urls")

    @property
    def enabled(self) -> bool:
        return bool(self.name)


class FeeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    bps: Annotated[int, Meta(ge=0, le=clearing.FEE_BPS_MAX)] = 0
    min_fen: Annotated[int, Meta(ge=0, le=clearing.FEE_MIN_FEN_MAX)] = 0


class ClearingConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # 日切: records decided from this time of day (China time, HH:MM) on belong to the next
    # settlement date.
    cutover: str = clearing.CUTOVER_DEFAULT
    # Fees by catalogue application code, paid by the acquirer on what it is owed:
    # [clearing.fees.FIN-PAY] bps = 50, min_fen = 1. Applications not named keep
    # protocols/clearing.py FEES_DEFAULT (public services pay none).
    fees: dict[str, FeeConfig] = msgspec.field(default_factory=dict)
    # The running switch clears each date after its cut-over (files in out_dir, default
    # DATA_DIR/clearing/), grace_s later: records decided just before it are committed then.
    scheduled: bool = True
    out_dir: str = ""
    grace_s: Annotated[float, Meta(ge=0, le=3600)] = 60.0

    def __post_init__(self) -> None:
        clearing.cutover_minutes(self.cutover)            # ValueError names the value

    def fee_table(self) -> dict[str, clearing.Fee]:
        return {**clearing.FEES_DEFAULT,
                **{app: clearing.Fee(f.bps, f.min_fen) for app, f in self.fees.items()}}


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # One line per event on stderr (switch/logs.py): readable text, or one JSON object per
    # line for a collector (journald, Loki, Elasticsearch).
    format: Literal["text", "json"] = "text"


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    data_dir: str = "onecard-data"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    fx: FxConfig = msgspec.field(default_factory=FxConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    core: CoreConfig = msgspec.field(default_factory=CoreConfig)
    demo: DemoConfig = msgspec.field(default_factory=DemoConfig)
    region: RegionConfig = msgspec.field(default_factory=RegionConfig)
    clearing: ClearingConfig = msgspec.field(default_factory=ClearingConfig)


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
    # One address served terminals and HTTP; now server.terminal_host and admin.host.
    ("server", "host"): "terminal_host",
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


def tokens_path(config: Config) -> Path:
    """The operators file: ``[admin] tokens_file``, relative to the data directory."""
    path = Path(config.admin.tokens_file)
    return path if path.is_absolute() else Path(config.data_dir) / path


def with_overrides(config: Config, **changes: object) -> Config:
    """Apply command-line overrides like ``server.terminal_host`` (None values are ignored) and
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
