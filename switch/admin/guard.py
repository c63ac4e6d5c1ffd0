"""What stands before an admin handler: a limit on wrong tokens per peer address (a token
bucket) with rate-limited logging of failures, so that a guessing peer costs little and
cannot flood the log. Tokens are 256 random bits: guessing one is hopeless at any rate, so
the right token is never refused for its address's wrong ones.

The token lookup itself is ``Operators.find`` (switch/admin/operators.py); this module only counts
its failures. A token is never logged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("onecard.admin")

LOG_INTERVAL_S = 60.0          # one log line per peer per interval, with the count
PEERS_MAX = 4096               # peers tracked; beyond, the longest-idle ones are forgotten


@dataclass
class Peer:
    tokens: float              # failures the peer may still make now
    refilled_at: float         # monotonic seconds
    logged_at: float = -math.inf
    unlogged: int = 0          # failures since the last log line


class FailureLimiter:
    """Wrong tokens per peer address: ``per_minute`` of them (the bucket's size), refilled
    evenly over a minute. While the bucket is empty a wrong token from the peer is answered
    429 (not looked up again, not logged); a right one still passes."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        assert per_minute >= 1
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self.clock = clock
        self.peers: dict[str, Peer] = {}
        self.failures_total = 0          # wrong tokens (for /metrics)
        self.refused_total = 0           # requests answered 429

    def _peer(self, address: str, now: float) -> Peer:
        peer = self.peers.get(address)
        if peer is None:
            if len(self.peers) >= PEERS_MAX:
                self._forget(now)
            peer = self.peers[address] = Peer(self.capacity, now)
        else:
            peer.tokens = min(self.capacity,
                              peer.tokens + (now - peer.refilled_at) * self.refill_per_s)
            peer.refilled_at = now
        return peer

    def _forget(self, now: float) -> None:
        full_s = self.capacity / self.refill_per_s
        for address in [a for a, p in self.peers.items() if now - p.refilled_at >= full_s]:
            del self.peers[address]
        while len(self.peers) >= PEERS_MAX:            # all recent: drop the oldest
            del self.peers[next(iter(self.peers))]

    def retry_after_s(self, address: str) -> int:
        """0 when the peer may try a token now, else whole seconds until it may."""
        peer = self.peers.get(address)
        if peer is None:
            return 0
        now = self.clock()
        peer = self._peer(address, now)
        if peer.tokens >= 1.0:
            return 0
        self.refused_total += 1
        return max(1, math.ceil((1.0 - peer.tokens) / self.refill_per_s))

    def failed(self, address: str) -> None:
        """A wrong token from ``address``: take one from its bucket, log (rate-limited)."""
        now = self.clock()
        peer = self._peer(address, now)
        peer.tokens = max(0.0, peer.tokens - 1.0)
        self.failures_total += 1
        peer.unlogged += 1
        if now - peer.logged_at >= LOG_INTERVAL_S:
            log.warning("admin API: %d wrong token%s from %s%s", peer.unlogged,
                        "" if peer.unlogged == 1 else "s", address,
                        "" if peer.tokens >= 1.0 else "; refusing it (429) until its limit "
                        "refills")
            peer.logged_at = now
            peer.unlogged = 0


class GuardCollector(Collector):
    """/metrics: wrong tokens and the requests refused for them, read at scrape time."""

    def __init__(self, limiter: FailureLimiter) -> None:
        self.limiter = limiter

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("onecard_admin_wrong_tokens", "Admin requests with a token "
                                  "no operator holds", value=self.limiter.failures_total)
        yield CounterMetricFamily("onecard_admin_rate_limited", "Admin requests refused 429: "
                                  "too many wrong tokens from their address",
                                  value=self.limiter.refused_total)
