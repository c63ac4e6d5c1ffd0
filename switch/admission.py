"""What the switch lets in: load shedding against a latency budget, a journal that cannot be
written, connection caps that keep descriptors for the admin port, and limits on partial
frames (slow senders, memory held by half-sent frames).

**Load shedding.** The decision is made once per received buffer, in Python, from one
attribute (:attr:`Admission.refusing`); the refusal itself is one core call per buffer
(``Engine.refuse``) that splits the buffer and answers every frame ``96`` with no state
change, at a fraction of an authorisation's cost (no card or ring lookup, no MAC, no journal).

What "work waiting" is measured by, every ``tick`` (a fifth of the budget, 2..20 ms):

- *event-loop lag*: how late the tick's own timer fired. The loop reads every ready socket
  once per iteration, so a busy iteration's length is about how long a request arriving now
  waits in the kernel before the core sees it; under CPU overload this is where the queue
  is. Wall time, not the loop's CPU time: a switch that keeps losing its core to other
  processes has less capacity, and its queue is just as real (a one-off stall is filtered
  by the rule below).
- *durability wait*: the age of the oldest reply batch waiting for the group commit (the
  head of ``Durability.waiting``, seen at consecutive ticks). When the disk is the bottleneck
  this is where the queue is, and the event loop looks idle.

``delay = lag + durability wait``. Shedding starts when the delay has stayed over
``latency_budget_ms`` for a whole budget (a transient, such as start-up's GC freeze, one slow
fsync or a stall of the VM, leaves no queue behind it: shedding would only refuse requests
that would have been answered in time), and restarts at the first tick over budget within a
budget of the last shedding: shedding makes the loop fast for a tick without the overload
going away.

Within one iteration (the tick cannot run in the middle of one): every record decided in it
is handed to the writer only when it ends (Durability._submit_batches), so once the iteration's
first read is ``latency_budget_ms`` old, its remaining reads are refused (one time
comparison per read; the time is the read's own ``last_rx``).

The loop's pace does not show a queue in one connection's kernel buffer (a single busy peer:
each read takes a few ms, yet the socket holds seconds of requests). So a read of
``FULL_READ_BYTES`` or more, which only a peer sending faster than it is read produces, also
asks the kernel how much is still queued (FIONREAD, one ioctl; never on a normal path's small
reads) and estimates ``(this read + queued bytes) x cost per byte``, the cost measured by
timing the core on such reads (EWMA). Over budget, this buffer, the connection's oldest
requests, is refused: dropping from the head drains the queue fastest, so what is admitted
next has waited least. A retransmission is answered while shedding, as the first time: a
frame whose STAN or seq its terminal's ring or horizon holds (one terminal lookup and one
probe) goes through the normal path, MAC and duplicate check, and costs no decision, no
record and no fsync; a terminal resending what timed out is not refused what it was told.

**Journal not writable.** When a commit fails for lack of space the writer keeps the records
and retries (core/commit.pyx); meanwhile every new request is refused ``96`` the same way,
``/readyz`` answers 503, and batches already decided wait for the retry that makes them
durable. Any other commit error still stops the switch (Switch.fail).

**Descriptors.** The soft RLIMIT_NOFILE is raised to the hard limit at start. Terminal
connections are capped per listener, per peer address (by default a quarter of what the
process can hold, so that one address never starves the others), and so that ``fd_reserve``
descriptors stay free for the admin/metrics port, the journal and checkpoints. A refused
connection is closed at once, counted, and logged at most once per ``LOG_INTERVAL_S``.

**Partial frames.** A frame must be complete ``partial_frame_timeout_s`` after its first
byte (Intake.sweep_idle); all connections together may hold ``partial_bytes_max`` bytes of
partial frames, and over it the connection holding the most is closed; a native connection
may send a frame of at most ``native_first_frame_bytes_max`` until one of its frames has
passed a MAC check (the core's ``Engine.authenticated``: a signed-on terminal's frame, or a
sign-on MACed under the master key). Signed-on state is per terminal in the core, and a
connection may carry several terminals, so the connection's own first authenticated frame is
what lifts its limit.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import resource
import sys
import termios
import time
from collections import Counter, deque
from pathlib import Path
from typing import TYPE_CHECKING

from onecard.core.engine import NATIVE, REFUSE_JOURNAL, REFUSE_OVERLOAD
from onecard.core.intake import FULL_READ_BYTES, Gate  # a read this big: the peer is ahead
from onecard.protocols.enums import PROTO
from onecard.switch import logs
from onecard.switch.errors import DataSetError

if TYPE_CHECKING:
    from onecard.switch.config import ServerConfig

log = logging.getLogger("onecard.admission")

LOG_INTERVAL_S = 10.0              # at most one line per kind of refusal this often
TICK_S_MIN = 0.002
TICK_S_MAX = 0.020
NATIVE_PREFIX_BYTES = 4
PROBE_BYTES = 1 << 20              # written and fsynced at start: can the directory commit?
COST_WEIGHT = 0.1                  # EWMA weight of each timed full read's cost per byte
COST_S_PER_BYTE_START = 20e-9      # ~1.9 us per ~95-byte ISO 8583 purchase, until measured
# Admission's verdicts on a read besides a refusal's reason (an Engine.refuse reason, an int).
RUN = "run"
RUN_TIMED = "run_timed"            # run, and time it to learn the cost per byte


class DataDirError(DataSetError):
    """The data directory cannot take a commit; the message says why, in one line."""


class RateLimitedLog:
    """One log line per ``interval_s`` at most, carrying how many events it stands for."""

    def __init__(self, what: str, interval_s: float = LOG_INTERVAL_S,
                 event: str = "connection_refused") -> None:
        assert interval_s > 0
        self.what = what
        self.event = event
        self.interval_s = interval_s
        self.count = 0                 # events since start (the metric)
        self._unlogged = 0
        self._last_s = -interval_s

    def note(self, detail: str) -> None:
        self.count += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_s >= self.interval_s:
            log.warning("%s: %d in the last %.0f s (latest: %s)", self.what, self._unlogged,
                        min(now - self._last_s, 1e9), detail,
                        extra=logs.extra(self.event, count=self._unlogged, latest=detail))
            self._unlogged = 0
            self._last_s = now


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20                 # Linux's own ceiling (fs.nr_open) by default
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft if soft != resource.RLIM_INFINITY else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)
        return soft
    return hard


def open_fds() -> int:
    """Descriptors this process has open now."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def check_data_dir(data_dir: Path, free_mb_min: int) -> None:
    """Refuse to start (DataDirError) when the data directory cannot take a commit: a write of
    PROBE_BYTES with fsync must succeed and ``free_mb_min`` MiB must be free after it."""
    assert free_mb_min >= 0
    probe = data_dir / f".onecard-write-probe-{os.getpid()}"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
        st = os.statvfs(data_dir)
    except OSError as exc:
        reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (
            exc.strerror or str(exc))
        raise DataDirError(f"data directory {data_dir} cannot take a commit: {reason} "
                           f"(a {PROBE_BYTES >> 20} MiB test write failed)") from exc
    finally:
        probe.unlink(missing_ok=True)
    free_mb = st.f_bavail * st.f_frsize >> 20
    if free_mb < free_mb_min:
        raise DataDirError(f"data directory {data_dir} has {free_mb} MiB free, below "
                           f"store.free_mb_min = {free_mb_min} MiB: free space first")


class Admission(Gate):
    """The switch's admission state; see the module docstring for the design. What every
    read needs of it (``admitting``, ``iteration_max_s``) is in its compiled base
    (core/intake.pyx's ``Gate``), kept current by :attr:`refusing`'s setter."""

    def __init__(self, srv: ServerConfig, waiting: deque) -> None:
        self.srv = srv
        self.waiting = waiting             # Durability.waiting: its head's age is a delay
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # start()
        self.latency_budget_s = srv.latency_budget_ms / 1000
        self.tick_s = min(max(self.latency_budget_s / 5, TICK_S_MIN), TICK_S_MAX)
        # A loop iteration that has processed reads for this long refuses its other reads:
        # nothing it decides is even handed to the writer before the iteration ends.
        self.iteration_max_s = self.latency_budget_s if self.latency_budget_s > 0 else 1e18
        self._refusing: int | None = None
        self.overloaded = False
        self.journal_writable = True
        self.journal_full_since = 0.0
        self.lag_s = 0.0
        self.delay_s = 0.0
        self._next_tick = 0.0
        self._over_since: float | None = None
        self._shed_last = -1e9
        self._head = None
        self._head_seen = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.s_per_byte = COST_S_PER_BYTE_START
        self._fionread = bytearray(4)
        # Connections.
        self.connections_max = srv.connections_max
        self.per_peer_max = srv.connections_per_peer_max or max(srv.connections_max // 4, 1)
        self.terminal_fds_max = srv.connections_max
        self.open_terminal = 0
        self.peers: Counter[str] = Counter()
        self.refused = {"listener_full": RateLimitedLog("connections refused: listener full"),
                        "peer_full": RateLimitedLog("connections refused: peer address at "
                                                    "connections_per_peer_max"),
                        "descriptors": RateLimitedLog("connections refused: descriptors "
                                                      "kept for the admin port")}
        # Partial frames.
        self.partial_bytes = 0
        self.partial_bytes_max = srv.partial_bytes_max
        self.first_frame_bytes_max = srv.native_first_frame_bytes_max
        self.partial_over_budget = RateLimitedLog("connections closed: partial frames over "
                                                  "server.partial_bytes_max",
                                                  event="connection_closed")
        self.first_frame_too_big = RateLimitedLog("native connections closed: first frame "
                                                  "above server.native_first_frame_bytes_max",
                                                  event="connection_closed")

    @property
    def refusing(self) -> int | None:
        """None: admit. Else the Engine.refuse reason every new buffer is answered with."""
        return self._refusing

    @refusing.setter
    def refusing(self, reason: int | None) -> None:
        self._refusing = reason
        self.admitting = reason is None

    # ---- start ------------------------------------------------------------------------------

    def start(self, loop) -> None:
        """Descriptor budget (after the listeners are open) and the shedding tick."""
        self._loop = loop
        nofile = raise_nofile_limit()
        reserve = self.srv.fd_reserve
        self.terminal_fds_max = max(nofile - open_fds() - reserve, 0)
        if not self.srv.connections_per_peer_max:
            self.per_peer_max = max(min(self.connections_max, self.terminal_fds_max) // 4, 1)
        log.info("open-files limit %d: up to %d terminal connections (%d kept in reserve), "
                 "%d from one address", nofile, self.terminal_fds_max, reserve,
                 self.per_peer_max)
        if self.latency_budget_s > 0:
            self._next_tick = loop.time() + self.tick_s
            self._timer = loop.call_at(self._next_tick, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ---- load shedding ----------------------------------------------------------------------

    def _tick(self) -> None:
        loop = self._loop
        now = loop.time()
        self.lag_s = max(now - self._next_tick, 0.0)
        waiting = self.waiting
        head = waiting[0] if waiting else None
        if head is not self._head:
            self._head, self._head_seen = head, now
        wait_s = now - self._head_seen if head is not None else 0.0
        self.delay_s = self.lag_s + wait_s
        if self.delay_s > self.latency_budget_s:
            if self._over_since is None:
                self._over_since = now
            # Sustained for a whole budget, or back within a budget of the last shedding
            # (which itself made the loop fast for a tick, not the overload go away).
            if (now - self._over_since >= self.latency_budget_s
                    or now - self._shed_last < self.latency_budget_s):
                self.overloaded = True
                self._shed_last = now
        else:
            self._over_since = None
            if now - self._shed_last >= self.tick_s:
                self.overloaded = False
        self._update()
        self._next_tick = now + self.tick_s
        self._timer = loop.call_at(self._next_tick, self._tick)

    def _update(self) -> None:
        if not self.journal_writable:
            self.refusing = REFUSE_JOURNAL
        elif self.overloaded:
            self.refusing = REFUSE_OVERLOAD
        else:
            self.refusing = None

    def verdict(self, fd: int, size: int, busy_s: float) -> str | int:
        """For a read the intake's fast path does not take (refusing, a full read, or a loop
        iteration ``busy_s`` into its reads already): RUN, RUN_TIMED, or the Engine.refuse
        reason to answer its new requests with."""
        if (self.refusing is None and busy_s < self.iteration_max_s
                and (size < FULL_READ_BYTES or self.admit_backlog(fd, size))):
            return RUN if size < FULL_READ_BYTES else RUN_TIMED
        return REFUSE_OVERLOAD if self.refusing is None else self.refusing

    def admit_backlog(self, fd: int, size: int) -> bool:
        """For a read of FULL_READ_BYTES or more (the peer is sending faster than it is read):
        whether this buffer and what is still queued behind it in the kernel (FIONREAD) can
        be processed within the budget, at the measured cost per byte. When not, this buffer
        (the connection's oldest requests) is refused, which drains the queue fastest."""
        if self.latency_budget_s <= 0 or fd < 0:
            return True
        try:
            fcntl.ioctl(fd, termios.FIONREAD, self._fionread)
        except OSError:
            return True
        queued = int.from_bytes(self._fionread, sys.byteorder, signed=True)
        return (size + queued) * self.s_per_byte <= self.latency_budget_s

    def learn_cost(self, elapsed_s: float, size: int) -> None:
        """A RUN_TIMED read took ``elapsed_s`` in the core: the cost per byte under load."""
        self.s_per_byte += (elapsed_s / max(size, 1) - self.s_per_byte) * COST_WEIGHT

    # ---- journal ----------------------------------------------------------------------------

    def journal_state(self, full_error: str | None) -> None:
        """After every commit signal: ``full_error`` is the writer's error while it retries a
        commit that failed for lack of space, None once commits succeed."""
        writable = full_error is None
        if writable == self.journal_writable:
            return
        self.journal_writable = writable
        if not writable:
            self.journal_full_since = time.monotonic()
            log.error("journal not writable (%s): new requests are refused 96 and /readyz is "
                      "not ready; decided replies wait for the retried commit", full_error,
                      extra=logs.extra("journal_unwritable", error=str(full_error)))
        else:
            log.warning("journal writable again after %.1f s: approving again",
                        time.monotonic() - self.journal_full_since,
                        extra=logs.extra("journal_writable"))
        self._update()

    # ---- connections ------------------------------------------------------------------------

    def accept(self, host: str, proto: int, on_listener: int) -> bool:
        """Whether a new terminal connection from ``host`` may stay open (``on_listener``
        are open on its protocol's listener); counts it if so."""
        reason = None
        if on_listener >= self.connections_max:
            reason = "listener_full"
        elif self.open_terminal >= self.terminal_fds_max:
            reason = "descriptors"
        elif self.peers[host] >= self.per_peer_max:
            reason = "peer_full"
        if reason is not None:
            self.refused[reason].note(f"{host} on {PROTO.name_of[proto]}")
            return False
        self.peers[host] += 1
        self.open_terminal += 1
        return True

    def release(self, host: str) -> None:
        """A connection :meth:`accept` counted is gone."""
        self.open_terminal -= 1
        self.peers[host] -= 1
        if self.peers[host] <= 0:
            del self.peers[host]
        assert self.open_terminal >= 0 and self.partial_bytes >= 0

    # ---- partial frames (the intake reads the buffers) ---------------------------------------

    def first_frame_admitted(self, announced: int, host: str | None) -> bool:
        """Whether a connection not yet authenticated may go on with a first frame that
        announces ``announced`` bytes; logged and counted when not."""
        if announced <= self.first_frame_bytes_max:
            return True
        self.first_frame_too_big.note(f"{host} announced {announced} bytes")
        return False


def first_frame_limit_applies(proto: int) -> bool:
    """Only native connections start with the small first-frame limit (an ISO 8583 frame is
    at most iso8583_frame_bytes_max, 8 KiB by default, already)."""
    return proto == NATIVE
