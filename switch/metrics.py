"""Prometheus exposition of the core's aggregated metrics (a custom collector reading numpy
arrays at scrape time; nothing is observed per message)."""

from __future__ import annotations

import gc
import shutil
from collections.abc import Iterator

import numpy as np
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from onecard.core.commit import LATENCY_BOUNDS_US as COMMIT_LATENCY_BOUNDS_US
from onecard.core.commit import SIZE_BOUNDS as COMMIT_SIZE_BOUNDS
from onecard.core.engine import REFUSE_REASONS
from onecard.core.metrics import BATCH_BOUNDS, LATENCY_BOUNDS_US
from onecard.core.state import Kind
from onecard.protocols.codes import CODES
from onecard.protocols.forward import ORIGINS
from onecard.switch.region.advices import Advices
from onecard.switch.region.link import LATENCY_BOUNDS_US as LINK_BOUNDS_US
from onecard.switch.server import PROTOCOL_NAMES, Switch
from onecard.switch.store.pg.committer import PgCommitter

ORIGIN_NAMES = {value: name.lower() for value, name, _ in ORIGINS}
KIND_NAMES = {int(k): k.name.removeprefix("KIND_").lower() for k in Kind
              if k.name not in ("KIND_NONE", "N_KINDS")}


def _buckets(counts: np.ndarray, bounds, scale: float = 1.0) -> list[tuple[str, float]]:
    cumulative = np.cumsum(counts)
    out = [(floatToGoString(round(b * scale, 9)), float(c))
           for b, c in zip(bounds, cumulative[:-1], strict=True)]
    out.append(("+Inf", float(cumulative[-1])))
    return out


def _requests(m) -> CounterMetricFamily:
    counts = m.counts.copy()
    requests = CounterMetricFamily("onecard_requests", "Requests decided, by response code",
                                   labels=["protocol", "type", "code"])
    for p, k, c in zip(*np.nonzero(counts), strict=True):
        requests.add_metric([PROTOCOL_NAMES[p], KIND_NAMES.get(int(k), str(k)),
                             CODES[c][0]], float(counts[p, k, c]))
    return requests


def _latency(m) -> HistogramMetricFamily:
    latency = HistogramMetricFamily(
        "onecard_request_latency_seconds",
        "Server-side latency from receiving a request to writing its reply",
        labels=["protocol", "type"])
    lat = m.latency.copy()
    lat_sum = m.latency_sum_us.copy()
    for p in PROTOCOL_NAMES:
        for k, name in KIND_NAMES.items():
            if lat[p, k].any():
                latency.add_metric([PROTOCOL_NAMES[p], name],
                                   _buckets(lat[p, k], LATENCY_BOUNDS_US, 1e-6),
                                   float(lat_sum[p, k]) / 1e6)
    return latency


def _batches(m) -> HistogramMetricFamily:
    batches = HistogramMetricFamily("onecard_batch_messages",
                                    "Messages per received buffer handed to the core",
                                    labels=["protocol"])
    sizes = m.batch_sizes.copy()
    for p, name in PROTOCOL_NAMES.items():
        batches.add_metric([name], _buckets(sizes[p], BATCH_BOUNDS), float(m.batch_sum[p]))
    return batches


def _journal(c) -> Iterator[Metric]:
    """The group committer's: commit latency and size, durable records, the WAL."""
    commit = HistogramMetricFamily("onecard_commit_latency_seconds",
                                   "Group commit duration including fsync")
    commit.add_metric([], _buckets(c.latency.copy(), COMMIT_LATENCY_BOUNDS_US, 1e-6),
                      c.latency_sum_us / 1e6)
    yield commit
    size = HistogramMetricFamily("onecard_commit_records", "Journal records per commit")
    size.add_metric([], _buckets(c.sizes.copy(), COMMIT_SIZE_BOUNDS), float(c.records))
    yield size
    yield CounterMetricFamily("onecard_journal_records_durable",
                              "Journal records durable since start", value=c.records)
    if isinstance(c, PgCommitter):
        yield from _pg_store(c)
        return
    yield GaugeMetricFamily("onecard_journal_wal_frames",
                            "Pages in the SQLite WAL not yet started over (4 KiB each)",
                            value=c.wal_frames)
    yield CounterMetricFamily("onecard_journal_wal_restarts",
                              "Times the journal's WAL was written from its start again",
                              value=c.wal_restarts)
    yield CounterMetricFamily("onecard_journal_wal_catch_up_seconds",
                              "Time the writer spent between commits copying the WAL's "
                              "last frames into the database", value=c.catch_up_us_sum / 1e6)


def _pg_store(c: PgCommitter) -> Iterator[Metric]:
    """The PostgreSQL store's: the lease and commits whose outcome had to be resolved."""
    yield GaugeMetricFamily("onecard_pg_lease_epoch",
                            "The fencing lease's epoch this switch commits under", value=c.epoch)
    yield GaugeMetricFamily("onecard_pg_commits_resolving",
                            "Commits whose outcome is being resolved on the primary now (no "
                            "reply after them leaves meanwhile)", value=c.resolving)
    yield CounterMetricFamily("onecard_pg_commits_resolved",
                              "Commits whose connection was lost, resolved on the primary "
                              "(found there or written there)", value=c.unknown_outcomes)
    yield CounterMetricFamily("onecard_pg_commit_timeouts",
                              "Commits cut for taking longer than store.commit_timeout_s",
                              value=c.timeouts)


def _server(sw: Switch) -> Iterator[Metric]:
    """Connections, and what waits on the journal."""
    conns = GaugeMetricFamily("onecard_connections", "Open terminal connections",
                              labels=["protocol"])
    for p, name in PROTOCOL_NAMES.items():
        conns.add_metric([name], len(sw.intake.connections[p]))
    yield conns
    yield GaugeMetricFamily("onecard_connections_max", "Terminal connections this switch "
                            "accepts in all (server.connections_max, or fewer if the open-files "
                            "limit is lower)", value=min(sw.admission.connections_max,
                                                         sw.admission.terminal_fds_max))
    yield CounterMetricFamily("onecard_idle_connections_closed",
                              "Connections closed for sending nothing (or half a frame) "
                              "for longer than the configured timeout",
                              value=sw.intake.idle_closed)
    yield GaugeMetricFamily("onecard_journal_pending_records",
                            "Journal records decided but not yet durable",
                            value=sw.engine.journal.next_no - sw.durability.durable_no)
    yield GaugeMetricFamily("onecard_replies_waiting",
                            "Reply batches waiting for their journal records",
                            value=len(sw.durability.waiting))
    yield GaugeMetricFamily("onecard_connections_paused", "Connections not read from while "
                            "their replies wait for the journal (backpressure)",
                            value=len(sw.durability.paused))


def _admission(sw: Switch) -> Iterator[Metric]:
    """Load shedding, the journal's writability, refused and cut connections."""
    adm = sw.admission
    shed = CounterMetricFamily("onecard_requests_shed",
                               "Request frames answered 96 at once without being processed "
                               "(overload: latency budget exceeded; journal_unwritable: disk "
                               "full)", labels=["protocol", "reason"])
    counts = sw.engine.shed.copy()
    for p, name in PROTOCOL_NAMES.items():
        for r, reason in enumerate(REFUSE_REASONS):
            shed.add_metric([name, reason], float(counts[p, r]))
    yield shed
    yield GaugeMetricFamily("onecard_shedding", "1 while new requests are refused 96",
                            value=0 if adm.refusing is None else 1)
    yield GaugeMetricFamily("onecard_admission_delay_seconds",
                            "Work waiting in the switch as last measured (event-loop lag "
                            "plus the oldest reply's wait for the journal)", value=adm.delay_s)
    yield GaugeMetricFamily("onecard_journal_writable",
                            "0 while commits fail for lack of space (retried)",
                            value=1 if adm.journal_writable else 0)
    yield CounterMetricFamily("onecard_journal_full_retries",
                              "Commits retried after failing for lack of space",
                              value=sw.committer.full_retries)
    refused = CounterMetricFamily("onecard_connections_refused",
                                  "Terminal connections closed at once by a connection cap",
                                  labels=["reason"])
    for reason, counter in adm.refused.items():
        refused.add_metric([reason], float(counter.count))
    yield refused
    yield _partials(adm)
    yield GaugeMetricFamily("onecard_partial_frame_bytes",
                            "Bytes of partial frames buffered over all connections",
                            value=adm.partial_bytes)


def _partials(adm) -> CounterMetricFamily:
    closed = CounterMetricFamily("onecard_partial_frame_connections_closed",
                                 "Connections closed for the partial-frame budget or a first "
                                 "native frame above its limit", labels=["reason"])
    closed.add_metric(["budget"], float(adm.partial_over_budget.count))
    closed.add_metric(["first_frame"], float(adm.first_frame_too_big.count))
    return closed


def _state(sw: Switch) -> Iterator[Metric]:
    """The card state held in memory, and the deny list."""
    yield CounterMetricFamily("onecard_deny_list_changes",
                              "Cards put on or taken off the transit deny list (its version)",
                              value=sw.state.deny_version)
    yield GaugeMetricFamily("onecard_gc_frozen_objects",
                            "Objects made at start-up that Python's cyclic collector skips "
                            "(a full collection walking them stalled the loop ~15 ms)",
                            value=gc.get_freeze_count())
    memory = sw.state.memory_report()
    yield GaugeMetricFamily("onecard_cards", "Cards held in memory", value=memory["cards"])
    yield GaugeMetricFamily("onecard_memory_bytes_per_card",
                            "Card, account and index bytes per card",
                            value=memory["bytes_per_card"])
    horizon = sw.state.horizon.stats()
    yield GaugeMetricFamily("onecard_idempotency_requests",
                            "Requests the rings forgot, still findable for a retransmission "
                            "or reversal ([core] idempotency_days settlement dates)",
                            value=horizon["rows"])
    yield GaugeMetricFamily("onecard_idempotency_requests_max",
                            "[core] idempotency_requests_max: past it, requests are declined 96",
                            value=horizon["rows_max"])
    yield GaugeMetricFamily("onecard_idempotency_bytes",
                            "Memory of the idempotency horizon (rows and indexes)",
                            value=horizon["bytes"])
    if sw.state.holders is not None:
        yield from _holders(sw.state.holders.stats())


def _holders(st: dict) -> Iterator[Metric]:
    """The holders file's vault: records opened from the cache, from disk, or refused."""
    lookups = CounterMetricFamily("onecard_holder_lookups",
                                  "Holder records read for lodging verifications, by how: "
                                  "hit (an opened block kept), miss (a block read and "
                                  "decrypted), refused (the block did not open: 96)",
                                  labels=["result"])
    for result, key in (("hit", "hits"), ("miss", "misses"), ("refused", "failures")):
        lookups.add_metric([result], float(st[key]))
    yield lookups
    yield GaugeMetricFamily("onecard_holder_clear_bytes", "Holder records in clear in memory "
                            "now (opened blocks kept; [core] holder_cache_bytes bounds it)",
                            value=st["clear_bytes"])


def _region(sw: Switch) -> Iterator[Metric]:
    """Forwarding between regional switches (switch/region/link.py): nothing on a switch that
    owns every province."""
    link = sw.link
    if link is None:
        return
    counts = sw.engine.router.counts.copy()
    fwd = CounterMetricFamily("onecard_forwarded_requests",
                              "Requests for other regions' cards, by the card's issuing "
                              "province and who decided (issuer, stand_in, unavailable: 91)",
                              labels=["province", "origin"])
    for p, o in zip(*np.nonzero(counts), strict=True):
        fwd.add_metric([str(p), ORIGIN_NAMES[o]], float(counts[p, o]))
    yield fwd
    latency = HistogramMetricFamily("onecard_forward_latency_seconds",
                                    "Round trip of a forwarded batch to its issuer's switch",
                                    labels=["destination"])
    failed = CounterMetricFamily("onecard_forward_batches_failed",
                                 "Forwarded batches not answered in time or refused (91)",
                                 labels=["destination"])
    for peer, st in sorted(link.stats.items()):
        latency.add_metric([peer], _buckets(st.latency, LINK_BOUNDS_US, 1e-6),
                           st.latency_sum_us / 1e6)
        failed.add_metric([peer], float(st.failed))
    yield latency
    yield failed
    yield CounterMetricFamily("onecard_forwarded_served_requests",
                              "Requests other regions forwarded here and this switch decided",
                              value=float(link.served_requests))
    if link.advices is not None:
        yield from _advices(link.advices)
    blocks = link.blocks
    if blocks is not None:
        yield CounterMetricFamily("onecard_blocked_cards_published",
                                  "This region's card changes published for other regions "
                                  "(status, deny list)", value=float(blocks.published))
        yield GaugeMetricFamily("onecard_foreign_blocked_cards",
                                "Other regions' cards that stand-in here refuses (lost, "
                                "frozen, replaced, deny-listed)",
                                value=sw.engine.router.blocked_cards)
        yield CounterMetricFamily("onecard_foreign_deny_list_changes",
                                  "Other regions' cards put onto or taken off this switch's "
                                  "deny list (FOREIGN_DENY records)",
                                  value=float(blocks.foreign_deny_changes))
    if link.catalogue is not None and link.catalogue.db is not None:
        yield GaugeMetricFamily("onecard_catalogue_version",
                                "Catalogue version enforced here (the same in every region)",
                                value=link.catalogue.version())
        yield CounterMetricFamily("onecard_catalogue_versions_applied",
                                  "Catalogue versions made in other regions, applied here",
                                  value=float(link.catalogue.applied))
    yield GaugeMetricFamily("onecard_routing_table_version",
                            "Version of the routing table in use", value=link.table_version)


def _advices(adv: Advices) -> Iterator[Metric]:
    """Reversal and stand-in advices (switch/region/advices.py): the acquirer's side, then
    the issuer's."""
    yield CounterMetricFamily("onecard_advices_queued",
                              "Reversal and stand-in advices made here for issuers",
                              value=float(adv.queued))
    yield CounterMetricFamily("onecard_advices_published",
                              "Reversal and stand-in advices stored in the JetStream "
                              "stream for issuers", value=float(adv.published))
    yield CounterMetricFamily("onecard_advices_messages_published",
                              "Stream messages the published advices travelled in "
                              "(batches)", value=float(adv.messages))
    yield GaugeMetricFamily("onecard_advices_pending",
                            "Advices waiting for the stream (queued or being stored)",
                            value=adv.pending)
    yield CounterMetricFamily("onecard_advices_applied",
                              "Other regions' advices applied here (delivered again "
                              "included)", value=float(adv.applied))
    yield CounterMetricFamily("onecard_advices_apply_calls",
                              "Core calls that applied them (batches)",
                              value=float(adv.calls))
    yield GaugeMetricFamily("onecard_advices_inbound_pending",
                            "Stream messages of advices for this region not yet fetched, "
                            "as of the last fetch", value=adv.inbound_pending)
    yield CounterMetricFamily("onecard_advices_posted",
                              "Other regions' stand-in advices posted here (once each)",
                              value=float(adv.posted))
    yield CounterMetricFamily("onecard_advices_unresolved",
                              "Advices not applied: reversals after their terminal's ring "
                              "moved on, stand-ins for cards unusable here; reconcile "
                              "(logged with terminal and sequence)",
                              value=float(adv.unresolved))


class SwitchCollector(Collector):
    def __init__(self, switch: Switch) -> None:
        self.switch = switch

    def collect(self) -> Iterator[Metric]:
        m = self.switch.engine.metrics
        yield _requests(m)
        yield _latency(m)
        yield _batches(m)
        yield from _journal(self.switch.committer)
        yield from _server(self.switch)
        yield from _admission(self.switch)
        yield from _state(self.switch)
        yield from _region(self.switch)
        yield from _clearing(self.switch)
        yield from _housekeeping(self.switch)
        if self.switch.replication is not None:
            yield from _replication(self.switch.replication)


def _housekeeping(sw: Switch) -> Iterator[Metric]:
    """Readiness, recovery, checkpoints and the data directory's disk (issue 17: alerts)."""
    ready, _ = sw.ready()
    yield GaugeMetricFamily("onecard_ready", "1 while the switch takes traffic (/readyz)",
                            value=1 if ready else 0)
    yield GaugeMetricFamily("onecard_recovery_seconds", "Time the last start took to load the "
                            "checkpoint and replay the journal", value=sw.loaded.seconds)
    yield GaugeMetricFamily("onecard_recovery_replayed_records", "Journal records the last "
                            "start replayed after its checkpoint", value=sw.loaded.replayed)
    cp = sw.checkpointer
    yield CounterMetricFamily("onecard_checkpoints_written", "Checkpoints published",
                              value=cp.written)
    yield CounterMetricFamily("onecard_checkpoints_failed", "Checkpoints that failed (logged; "
                              "the journal still holds everything)", value=cp.failed)
    yield GaugeMetricFamily("onecard_checkpoint_last_duration_seconds",
                            "Time the last checkpoint took to write", value=cp.last_duration_s)
    yield GaugeMetricFamily("onecard_checkpoint_last_timestamp_seconds",
                            "When the last checkpoint was published (unix time; 0 none yet)",
                            value=cp.last_at_s)
    yield GaugeMetricFamily("onecard_checkpoint_last_record",
                            "Journal record number the last checkpoint covers up to",
                            value=max(cp.last_upto, sw.loaded.snapshot_upto))
    try:
        disk = shutil.disk_usage(sw.config.data_dir)
    except OSError:
        return                          # gone: /readyz and the journal say so louder
    yield GaugeMetricFamily("onecard_data_disk_free_bytes", "Bytes free (to this user) on the "
                            "data directory's filesystem", value=disk.free)
    yield GaugeMetricFamily("onecard_data_disk_size_bytes", "Size of the data directory's "
                            "filesystem", value=disk.total)


def _replication(mon) -> Iterator[Metric]:
    """The PostgreSQL primary's standbys (switch/store/pg/replication.py): failover and lag."""
    yield GaugeMetricFamily("onecard_pg_primary_reachable", "1 when the last poll of "
                            "pg_stat_replication reached the primary", value=1 if mon.ok else 0)
    standbys = GaugeMetricFamily("onecard_pg_standbys", "Standbys attached to the primary",
                                 labels=["sync_state"])
    states = {"sync": 0, "quorum": 0, "potential": 0, "async": 0}
    for sb in mon.standbys:
        states[sb.sync_state] = states.get(sb.sync_state, 0) + 1
    for state, n in states.items():
        standbys.add_metric([state], n)
    yield standbys
    lag = GaugeMetricFamily("onecard_pg_replication_lag_bytes", "WAL the primary has written "
                            "that a standby has not replayed", labels=["standby", "sync_state"])
    lag_s = GaugeMetricFamily("onecard_pg_replication_lag_seconds", "How long ago a standby "
                              "replayed what the primary had flushed (PostgreSQL replay_lag)",
                              labels=["standby"])
    for sb in mon.standbys:
        if sb.lag_bytes is not None:
            lag.add_metric([sb.name, sb.sync_state], sb.lag_bytes)
        lag_s.add_metric([sb.name], sb.lag_s)
    yield lag
    yield lag_s


def _clearing(sw: Switch) -> Iterator[Metric]:
    """Clearing runs (issue 16): scheduled after each cut-over, or asked through the API."""
    c = getattr(sw, "clearing", None)
    if c is None:
        return
    yield CounterMetricFamily("onecard_clearing_runs", "Settlement dates cleared", value=c.runs)
    yield CounterMetricFamily("onecard_clearing_failures", "Clearing runs that failed (logged; "
                              "a scheduled one is retried)", value=c.failures)
    yield CounterMetricFamily("onecard_clearing_dates_failed", "Settlement dates the schedule "
                              "gave up on after its attempts (logged; the next dates go on)",
                              value=c.dates_failed)
    yield GaugeMetricFamily("onecard_clearing_last_duration_seconds",
                            "Duration of the last clearing run", value=c.last_duration_s)
    yield GaugeMetricFamily("onecard_clearing_last_records",
                            "Records that moved money on the last date cleared",
                            value=c.last_records)
    yield GaugeMetricFamily("onecard_clearing_last_parties",
                            "Parties with a position on the last date cleared",
                            value=c.last_parties)
    yield GaugeMetricFamily("onecard_clearing_last_exceptions",
                            "Open exceptions (reconciliation) of the last date cleared",
                            value=c.last_exceptions)
    yield CounterMetricFamily("onecard_clearing_computations", "Dates computed by a clearing "
                              "worker process (positions, exceptions and files of a date at the "
                              "same journal end share one)", value=c.computations)
    yield GaugeMetricFamily("onecard_clearing_worker_peak_rss_bytes", "The largest resident "
                            "memory a clearing worker process reached (the serving process "
                            "holds no date's records)", value=c.worker_peak_rss_bytes)


def registry_for(switch: Switch) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SwitchCollector(switch))
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
