"""The faults the simulator injects, and how often. A fault is drawn per step from the seed's
generator, so a seed always injects the same faults at the same steps."""

from __future__ import annotations

from dataclasses import dataclass

CRASH_BEFORE_COMMIT = "crash before commit"      # records queued, nothing written: all lost
CRASH_AFTER_COMMIT = "crash after commit"        # durable, replies never sent: retries
FSYNC_ERROR = "fsync error"                      # written, fsync failed: fail-stop
DISK_FULL = "disk full"                          # SQLITE_FULL for a few steps: replies held
TORN_WRITE = "torn write"                        # crash mid-commit: the WAL cut inside it
SLOW_DISK = "slow disk"                          # commits held back a few steps
CRASH_IN_CHECKPOINT = "crash in checkpoint"      # a half-written checkpoint left behind
RESTART = "graceful restart"
WAL_COPY = "WAL checkpoint"                      # SQLite's WAL copied into the database

KINDS = (CRASH_BEFORE_COMMIT, CRASH_AFTER_COMMIT, FSYNC_ERROR, DISK_FULL, TORN_WRITE,
         SLOW_DISK, CRASH_IN_CHECKPOINT, RESTART, WAL_COPY)
CRASHES = frozenset({CRASH_BEFORE_COMMIT, CRASH_AFTER_COMMIT, FSYNC_ERROR, TORN_WRITE,
                     CRASH_IN_CHECKPOINT})


@dataclass(frozen=True)
class FaultRates:
    """Chance per step of each fault (the rest of the time, no fault)."""
    crash_before_commit: float = 0.006
    crash_after_commit: float = 0.006
    fsync_error: float = 0.004
    disk_full: float = 0.01
    torn_write: float = 0.005
    slow_disk: float = 0.03
    crash_in_checkpoint: float = 0.003
    restart: float = 0.004
    wal_copy: float = 0.02

    def table(self) -> list[tuple[str, float]]:
        return list(zip(KINDS, (self.crash_before_commit, self.crash_after_commit,
                                self.fsync_error, self.disk_full, self.torn_write,
                                self.slow_disk, self.crash_in_checkpoint, self.restart,
                                self.wal_copy), strict=True))

    def scaled(self, factor: float) -> FaultRates:
        return FaultRates(*(rate * factor for _, rate in self.table()))


def draw(rates: FaultRates, u: float) -> str | None:
    """The fault for a uniform draw u in [0, 1), or None."""
    edge = 0.0
    for kind, rate in rates.table():
        edge += rate
        if u < edge:
            return kind
    return None
