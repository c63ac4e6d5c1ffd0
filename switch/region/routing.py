"""The routing table: which region's switch owns each issuing province, versioned, kept as one
JSON value (key `table`) in the NATS key-value bucket `onecard_routing` that every switch
watches (docs/regions.md).

Writers go through `publish`, a compare-and-set on the key's revision: two operators editing
the table at once cannot silently overwrite each other, the second gets StaleRoutingTable and
starts again from `current`. Each published table carries the previous one's version + 1, so a
switch can tell a newer table from a replayed or reordered older one without trusting the
order it hears them in (`watch` applies only versions above the last one applied).

nats-py is imported where it is used: the table itself and `destinations` serve a switch
without the `region` extra installed (the default single switch owns everything)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import msgspec
import numpy as np

from onecard.switch.errors import RegionError

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

log = logging.getLogger("onecard.region")

BUCKET = "onecard_routing"
KEY = "table"
HISTORY = 16                    # earlier tables kept in the bucket, for the audit trail
PROVINCE_MIN, PROVINCE_MAX = 10, 99     # two-digit province codes (switch/regions.csv: 11..82)
PEERS_MAX = 32                  # other regions one switch forwards to
REGIONS_MAX = PEERS_MAX + 1     # ... so a table names at most this many regions
REGION_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
VERSION_MAX = 2**53             # exact in every JSON reader
TABLE_BYTES_MAX = 64 * 1024     # 90 provinces x 40 bytes fit well within it
LOCAL = 0                       # destinations(): served by this switch
PUBLISH_TIMEOUT_S = 30.0        # retrying while the bucket elects a leader (a server lost)
PUBLISH_RETRY_S = 0.5
WATCH_IDLE_S = 5.0              # re-read the table when the watcher has been quiet this long
WATCH_RETRY_S = 1.0             # after a failed watch, before the next attempt
REPLICAS_MAX = 5                # JetStream's own limit for a stream's replicas


class StaleRoutingTable(RegionError):
    """The table changed since the revision the writer based its edit on (or was created
    meanwhile): read `current` again, re-apply the edit, publish again."""


def check_region(name: object) -> str:
    """name if it is a valid region name, else ValueError."""
    if not isinstance(name, str) or REGION_RE.fullmatch(name) is None:
        raise ValueError(f"region name {name!r}: must match {REGION_RE.pattern} "
                         f"(a lower-case letter, then up to 31 of a-z 0-9 _ -)")
    return name


class RoutingTable(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One version of the table: owners maps a province code to the region that owns it.

    JSON: {"version": 7, "owners": {"11": "north", "31": "east", ...}} (msgspec writes the
    integer keys as strings, as JSON requires, and reads them back as integers)."""

    version: int
    owners: dict[int, str]

    def __post_init__(self) -> None:
        # Decoding checks the types; a table built in Python is checked here as well.
        if not _is_int(self.version) or not 1 <= self.version <= VERSION_MAX:
            raise ValueError(f"routing table version {self.version!r}: must be 1..{VERSION_MAX}")
        if not isinstance(self.owners, dict):
            raise ValueError(f"routing table owners: a dict province -> region, not "
                             f"{type(self.owners).__name__}")
        for province, region in self.owners.items():
            if not _is_int(province) or not PROVINCE_MIN <= province <= PROVINCE_MAX:
                raise ValueError(f"province {province!r}: must be a code "
                                 f"{PROVINCE_MIN}..{PROVINCE_MAX}")
            check_region(region)
        regions = set(self.owners.values())
        if len(regions) > REGIONS_MAX:
            raise ValueError(f"the routing table names {len(regions)} regions, more than "
                             f"{REGIONS_MAX}")

    def provinces_of(self, region: str) -> list[int]:
        """The provinces region owns, ascending."""
        return sorted(p for p, r in self.owners.items() if r == region)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def encode(table: RoutingTable) -> bytes:
    return msgspec.json.encode(table)


def decode(data: bytes) -> RoutingTable:
    """A table from its JSON; ValueError (naming what is wrong) for anything else."""
    if len(data) > TABLE_BYTES_MAX:
        raise ValueError(f"routing table of {len(data)} bytes, more than {TABLE_BYTES_MAX}")
    try:
        return msgspec.json.decode(data, type=RoutingTable)
    except msgspec.DecodeError as exc:     # ValidationError included (__post_init__'s too)
        raise ValueError(f"invalid routing table: {exc}") from exc


def province_of(pan: int | str) -> int:
    """A demo card's issuing province: digits 4 and 5 of its number (621 + province + ...)."""
    return int(str(pan)[3:5])


def destinations(table: RoutingTable, local_region: str) -> tuple[np.ndarray, list[str]]:
    """Where a request for each province goes, as the core reads it: (dest, peers).

    dest is a uint8 array of 100 entries indexed by province code: LOCAL (0) for a province
    local_region owns, k >= 1 for one owned by peers[k - 1]. A province nobody owns (absent
    from the table, including codes 0..9) is LOCAL too: this switch answers for it from its own
    state (card unknown, `14`, when it holds none), as the single switch always did, rather
    than forwarding into the void. peers are the other regions named in the table, sorted, so
    every switch reading the same version numbers them the same way."""
    check_region(local_region)
    peers = sorted(set(table.owners.values()) - {local_region})
    if len(peers) > PEERS_MAX:
        raise ValueError(f"{len(peers)} peer regions, more than {PEERS_MAX}")
    index = {region: k for k, region in enumerate(peers, 1)}
    dest = np.full(PROVINCE_MAX + 1, LOCAL, dtype=np.uint8)
    for province, region in table.owners.items():
        dest[province] = index.get(region, LOCAL)
    return dest, peers


def replicas_for(n_servers: int) -> int:
    """The bucket's replicas for a NATS deployment of n_servers: 3 (survives one server lost)
    from three servers up, else 1 (one server, or two, whose R2 would stop at either loss)."""
    if n_servers < 1:
        raise ValueError(f"n_servers must be at least 1, not {n_servers}")
    return 3 if n_servers >= 3 else 1


CREATE_ATTEMPTS = 5
PLACEMENT_RETRY_S = 1.0


async def open_bucket(js: JetStreamContext, replicas: int, bucket: str = BUCKET,
                      history: int = HISTORY,
                      description: str = "onecard: province -> owning region") -> KeyValue:
    """Bind a bucket (the routing table's by default), creating it (file storage, replicas
    copies) if it is missing. An existing bucket is bound as it is, whatever its replicas.
    Switches starting together race to create it: the losers bind the winner's."""
    from nats.errors import TimeoutError as NatsTimeoutError
    from nats.js.errors import APIError, BucketNotFoundError

    if not 1 <= replicas <= REPLICAS_MAX:
        raise ValueError(f"replicas must be 1..{REPLICAS_MAX}, not {replicas}")
    for attempt in range(CREATE_ATTEMPTS):
        with contextlib.suppress(BucketNotFoundError):
            return await js.key_value(bucket)
        try:
            return await js.create_key_value(bucket=bucket, history=history, replicas=replicas,
                                              description=description)
        except APIError as exc:
            # Another switch created it between our bind and create, with a different config
            # (JetStream accepts a create with the same one): 10058, stream name in use.
            # 10005, no peers for placement: a node just (re)started is not yet counted as
            # online by the meta leader, for a moment after it reports itself current.
            if exc.err_code == 10005 and attempt < CREATE_ATTEMPTS - 1:
                await asyncio.sleep(PLACEMENT_RETRY_S)
                continue
            if exc.err_code != 10058:
                raise
        except NatsTimeoutError:
            # A create racing others' may time out while the stream's group forms.
            if attempt == CREATE_ATTEMPTS - 1:
                raise
    return await js.key_value(bucket)


async def current(kv: KeyValue) -> tuple[RoutingTable, int] | None:
    """The latest table and its revision (the bucket's sequence number, what `publish`
    compares against), None if none was ever published (or it was deleted)."""
    from nats.js.errors import KeyNotFoundError

    try:
        entry = await kv.get(KEY)
    except KeyNotFoundError:
        return None
    assert entry.revision is not None           # an entry read from the stream has its sequence
    return decode(entry.value or b""), entry.revision


async def publish(kv: KeyValue, table: RoutingTable, expected_revision: int | None,
                  timeout_s: float = PUBLISH_TIMEOUT_S) -> int:
    """Publish table if the table's revision is still expected_revision (None: no table yet).
    Its version must be the current one's + 1 (1 for the first). Returns the new revision.

    StaleRoutingTable if someone published since (the check is the server's compare-and-set,
    not only the read here); ValueError for a version that does not follow. While JetStream
    has no leader for the bucket (a server lost), attempts are repeated for up to timeout_s:
    an attempt that finds this very table already there (an earlier attempt's write landed,
    its acknowledgement did not) returns its revision."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeoutError
    from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

    data = encode(table)
    if len(data) > TABLE_BYTES_MAX:
        raise ValueError(f"routing table of {len(data)} bytes, more than {TABLE_BYTES_MAX}")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await _publish_once(kv, table, data, expected_revision)
        except (NatsTimeoutError, NoRespondersError, NoStreamResponseError,
                ServiceUnavailableError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("publishing routing table version %d: %r, retrying", table.version, exc)
            await asyncio.sleep(PUBLISH_RETRY_S)


async def _publish_once(kv: KeyValue, table: RoutingTable, data: bytes,
                        expected_revision: int | None) -> int:
    from nats.js.errors import KeyWrongLastSequenceError

    found = await current(kv)
    if found is not None and found[0] == table:
        return found[1]
    revision = found[1] if found else None
    if revision != expected_revision:
        raise StaleRoutingTable(f"routing table is at revision {revision}, not "
                                f"{expected_revision}: read it again")
    version = found[0].version + 1 if found else 1
    if table.version != version:
        raise ValueError(f"routing table version {table.version}: the next one is {version}")
    try:
        if expected_revision is None:
            return await kv.create(KEY, data)
        return await kv.update(KEY, data, last=expected_revision)
    except KeyWrongLastSequenceError as exc:
        raise StaleRoutingTable(f"routing table changed while publishing version "
                                f"{table.version}: read it again") from exc


OnChange = Callable[[RoutingTable], Awaitable[None] | None]


def watch(kv: KeyValue, on_change: OnChange, last_version: int = 0) -> asyncio.Task[None]:
    """Start a task (in the running loop; cancel it to stop) that calls on_change(table) for
    every table with a version above the last one applied (last_version at first), the current
    one included if it is newer. Older or equal versions are skipped.

    It lives through reconnects and NATS servers lost: nats-py reconnects and re-creates the
    watcher's ordered consumer when it misses its heartbeats, and whenever the watcher has been
    quiet WATCH_IDLE_S the table is read again, so a change made while the watch was broken is
    applied within seconds of the connection coming back. on_change may be a coroutine
    function; a call that raises is logged and its version is retried at the next re-read."""
    if not _is_int(last_version) or not 0 <= last_version <= VERSION_MAX:
        raise ValueError(f"last_version {last_version!r}: must be 0..{VERSION_MAX}")
    return asyncio.create_task(follow(kv, KEY, _Applier(on_change, last_version)),
                               name=f"watch {BUCKET}/{KEY}")


class _Applier:
    """The version last applied and the call that applies newer ones."""

    def __init__(self, on_change: OnChange, last_version: int) -> None:
        self.on_change = on_change
        self.version = last_version
        self.rejected: bytes | None = None

    async def entry(self, key: str, data: bytes | None) -> None:
        if data is not None:            # deletes and purges carry no table
            await self.offer(data)

    async def reread(self, kv: KeyValue) -> None:
        from nats.js.errors import KeyNotFoundError

        # Not current(): a corrupt value is offer()'s to log, not an error here.
        with contextlib.suppress(KeyNotFoundError):
            await self.offer((await kv.get(KEY)).value)

    async def offer(self, data: bytes | None) -> None:
        try:
            table = decode(data or b"")
        except ValueError as exc:
            # Once per bad value, not at every re-read while it stays the current one.
            if data != self.rejected:
                log.error("routing table ignored, keeping version %d: %s", self.version, exc)
                self.rejected = data
            return
        if table.version <= self.version:
            return
        try:
            result = self.on_change(table)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("applying routing table version %d failed", table.version)
            return
        self.version = table.version


class Follower(Protocol):
    async def entry(self, key: str, data: bytes | None) -> None:
        """A key's new value (None: deleted or purged)."""

    async def reread(self, kv: KeyValue) -> None:
        """The watch was quiet: read the keys again (a change may have been missed)."""


async def follow(kv: KeyValue, keys: str, follower: Follower) -> None:
    """Watch ``keys`` (a key or a wildcard) for ever, through reconnects and lost servers,
    giving the follower each change; an idle watch makes it read the keys again."""
    from nats.errors import ConnectionClosedError
    from nats.errors import Error as NatsError

    while True:
        try:
            watcher = await kv.watch(keys)
        except ConnectionClosedError:
            raise                       # closed for good (by its owner or out of retries)
        except (TimeoutError, NatsError, OSError) as exc:
            log.warning("watch of %s failed (%r), retrying", keys, exc)
            await asyncio.sleep(WATCH_RETRY_S)
            continue
        try:
            await _follow(kv, watcher, follower)
        except ConnectionClosedError:
            raise
        except (TimeoutError, NatsError, OSError) as exc:
            log.warning("watch of %s broke (%r), restarting it", keys, exc)
            await asyncio.sleep(WATCH_RETRY_S)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()


async def _follow(kv: KeyValue, watcher: KeyValue.KeyWatcher, follower: Follower) -> None:
    """Give the watcher's entries as they come; read the keys again when it is quiet."""
    from nats.errors import TimeoutError as NatsTimeoutError

    while True:
        try:
            entry = await watcher.updates(timeout=WATCH_IDLE_S)
        except NatsTimeoutError:
            await follower.reread(kv)
            continue
        if entry is None:               # the end of the initial values
            continue
        await follower.entry(entry.key, None if entry.operation is not None else entry.value)
