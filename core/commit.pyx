# cython: language_level=3
"""Group commit without the GIL: a writer thread that appends journal records to SQLite
through its C API and wakes the event loop through an eventfd.

Why not Python's sqlite3 here: with the server on one core, a writer thread written in Python
needs the GIL back after every fsync and then waits behind the event loop (a switch interval,
plus a context switch each way): that wait was a quarter of the writer's time under load. This
thread never takes the GIL while running; the loop hands it records with ``submit`` (one call
per batch) and learns what is durable from ``durable_no`` when the eventfd fires.

The database is the same SQLite file the rest of the switch opens with the stdlib module; the
row format is ``journal(first_no, n, ts_us, records, format, day, kinds)`` as in
switch/store/sqlite.py: a row is cut where the calendar day changes (``day_run``).
"""

from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

import numpy as np

from onecard.core.journal cimport JOURNAL_FORMAT, JREC_BYTES, JRec, Journal
from onecard.core.wire cimport monotonic_ns, realtime_us
from onecard.protocols.clearing import CST_OFFSET_S, DAYS_1970_TO_2000, SECONDS_PER_DAY

cdef extern from "<unistd.h>" nogil:
    ssize_t write(int fd, const void* buf, size_t n)
    int usleep(unsigned int us)

cdef extern from "<errno.h>" nogil:
    int ENOSPC
    int EDQUOT

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_mutex_init(pthread_mutex_t*, void*)
    int pthread_mutex_destroy(pthread_mutex_t*)
    int pthread_mutex_lock(pthread_mutex_t*)
    int pthread_mutex_unlock(pthread_mutex_t*)
    int pthread_cond_init(pthread_cond_t*, void*)
    int pthread_cond_destroy(pthread_cond_t*)
    int pthread_cond_wait(pthread_cond_t*, pthread_mutex_t*)
    int pthread_cond_signal(pthread_cond_t*)

cdef extern from "sqlite3.h" nogil:
    ctypedef struct sqlite3:
        pass
    ctypedef struct sqlite3_stmt:
        pass
    int sqlite3_open_v2(const char* filename, sqlite3** db, int flags, const char* vfs)
    int sqlite3_close_v2(sqlite3* db)
    int sqlite3_exec(sqlite3* db, const char* sql, void* callback, void* arg, char** errmsg)
    int sqlite3_prepare_v2(sqlite3* db, const char* sql, int n, sqlite3_stmt** stmt,
                           const char** tail)
    int sqlite3_bind_int64(sqlite3_stmt* stmt, int i, long long v)
    int sqlite3_bind_blob(sqlite3_stmt* stmt, int i, const void* data, int n, void* destructor)
    int sqlite3_step(sqlite3_stmt* stmt)
    int sqlite3_reset(sqlite3_stmt* stmt)
    int sqlite3_finalize(sqlite3_stmt* stmt)
    int sqlite3_busy_timeout(sqlite3* db, int ms)
    const char* sqlite3_errmsg(sqlite3* db)
    int sqlite3_extended_errcode(sqlite3* db)
    int sqlite3_system_errno(sqlite3* db)
    void* sqlite3_wal_hook(sqlite3* db, int (*cb)(void*, sqlite3*, const char*, int) noexcept nogil,
                           void* arg)
    int sqlite3_wal_checkpoint_v2(sqlite3* db, const char* name, int mode, int* log, int* ckpt)
    int SQLITE_CHECKPOINT_PASSIVE
    int SQLITE_OK
    int SQLITE_FULL
    int SQLITE_IOERR
    int SQLITE_DONE
    int SQLITE_OPEN_READWRITE
    int SQLITE_OPEN_FULLMUTEX

LATENCY_BOUNDS_US = (100, 250, 500, 1000, 2000, 3000, 5000, 10000, 25000, 50000, 100000,
                     1000000)
SIZE_BOUNDS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)
cdef enum:
    N_LAT = 12
    N_SIZE = 9
    MAX_ROW_RECORDS = 1 << 20           # a row is at most 64 MiB
    SLEEP_STEP_US = 10000               # a full disk's retry wait is cut into these
cdef uint64_t LAT_B[N_LAT]
cdef uint64_t SIZE_B[N_SIZE]
for _i, _b in enumerate(LATENCY_BOUNDS_US):
    LAT_B[_i] = _b
for _i, _b in enumerate(SIZE_BOUNDS):
    SIZE_B[_i] = _b


cdef inline int bucket(const uint64_t* bounds, int n, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(n):
        if v <= bounds[i]:
            return i
    return n


cdef struct Buf:
    JRec* recs
    size_t n
    size_t cap
    uint64_t first_no


cdef struct WalInfo:
    int frames                            # frames in the WAL after the last commit
    uint64_t restarts                     # commits that began writing the WAL from its start


cdef int on_wal(void* arg, sqlite3* db, const char* name, int frames) noexcept nogil:
    cdef WalInfo* w = <WalInfo*>arg
    if frames < w.frames:
        w.restarts += 1
    w.frames = frames
    return SQLITE_OK


cdef int buf_append(Buf* b, const JRec* recs, size_t n) noexcept nogil:
    cdef size_t cap
    cdef JRec* grown
    if b.n + n > b.cap:
        cap = b.cap * 2 if b.cap else 4096
        while cap < b.n + n:
            cap *= 2
        grown = <JRec*>realloc(b.recs, cap * sizeof(JRec))
        if grown == NULL:
            return -1
        b.recs = grown
        b.cap = cap
    memcpy(b.recs + b.n, recs, n * sizeof(JRec))
    b.n += n
    return 0


cdef int64_t CST_OFFSET = CST_OFFSET_S, DAY_S = SECONDS_PER_DAY, DAY_2000 = DAYS_1970_TO_2000


cdef inline int64_t calendar_day(int64_t ts_us) noexcept nogil:
    """protocols/journal_codec.calendar_days of one time (floor division, as numpy's)."""
    cdef int64_t s = ts_us // 1_000_000
    if ts_us < 0 and s * 1_000_000 != ts_us:
        s -= 1
    s += CST_OFFSET
    return (s // DAY_S - (1 if s < 0 and s % DAY_S else 0)) - DAY_2000


cdef size_t day_run(const JRec* recs, size_t n, size_t most, int64_t* day,
                    int64_t* kinds) noexcept nogil:
    """How many records from ``recs`` make one row: those of the first one's calendar day
    (journal_codec.day_runs), at most ``most``; that day and the row's kinds bit mask."""
    cdef size_t i = 1
    day[0] = calendar_day(recs[0].head.ts_us)
    kinds[0] = (<int64_t>1) << recs[0].head.kind
    while i < n and i < most and calendar_day(recs[i].head.ts_us) == day[0]:
        kinds[0] |= (<int64_t>1) << recs[i].head.kind
        i += 1
    return i


cdef class GroupCommitter:
    """Owns the writer connection and the records on their way to it."""
    cdef sqlite3* db
    cdef sqlite3_stmt* insert
    cdef pthread_mutex_t mu
    cdef pthread_cond_t cv
    cdef Buf pending                      # filled by submit() (loop thread)
    cdef Buf writing                      # owned by the writer thread
    cdef int efd
    cdef bint stopping
    cdef bint running
    cdef bint catch_up                    # finish a checkpoint between two commits
    cdef WalInfo wal
    cdef readonly uint64_t catch_ups, catch_up_us_sum
    cdef readonly uint64_t durable_no     # records below this number are durable
    cdef readonly uint64_t submitted_no
    cdef readonly object error            # set (from the loop thread) when a commit failed
    cdef char errbuf[256]
    cdef bint failed
    cdef bint full                        # the last commit failed for lack of space
    cdef size_t done                      # records of ``writing`` already in rows
    cdef uint32_t full_retry_ms
    cdef readonly uint64_t full_retries   # commits retried after a full disk
    cdef readonly object latency          # commit latency histogram (µs buckets)
    cdef readonly object sizes            # records per commit histogram
    cdef uint64_t* lat
    cdef uint64_t* siz
    cdef readonly uint64_t latency_sum_us, records, commits

    def __cinit__(self):
        pthread_mutex_init(&self.mu, NULL)
        pthread_cond_init(&self.cv, NULL)

    def __init__(self, str path, int eventfd, uint64_t next_no, *, str synchronous="FULL",
                 uint32_t full_retry_ms=1000):
        cdef char* err = NULL
        if not 1 <= full_retry_ms <= 600_000:
            raise ValueError("full_retry_ms must be within 1..600000")
        self.full_retry_ms = full_retry_ms
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError(f"synchronous must be FULL, NORMAL or OFF, got {synchronous!r}")
        encoded = path.encode()
        if sqlite3_open_v2(encoded, &self.db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK:
            raise OSError(f"cannot open {path}: {sqlite3_errmsg(self.db).decode()}")
        sqlite3_busy_timeout(self.db, 10000)
        # Checkpointing the WAL is left to a background connection (Checkpointer) so that a
        # commit never stops to copy pages into the database.
        pragmas = (f"PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous}; "
                   "PRAGMA wal_autocheckpoint=0;").encode()
        if sqlite3_exec(self.db, pragmas, NULL, NULL, &err) != SQLITE_OK:
            raise OSError(f"{path}: {sqlite3_errmsg(self.db).decode()}")
        # Also turns SQLite's own auto-checkpoint off for this connection.
        sqlite3_wal_hook(self.db, on_wal, &self.wal)
        insert = ("INSERT INTO journal (first_no, n, ts_us, records, format, day, kinds) "
                  f"VALUES (?, ?, ?, ?, {JOURNAL_FORMAT}, ?, ?)").encode()
        if sqlite3_prepare_v2(self.db, insert, -1, &self.insert, NULL) != SQLITE_OK:
            raise OSError(f"{path}: {sqlite3_errmsg(self.db).decode()}")
        self.efd = eventfd
        self.durable_no = self.submitted_no = next_no
        self.pending.first_no = next_no
        self.latency = np.zeros(N_LAT + 1, dtype=np.uint64)
        self.sizes = np.zeros(N_SIZE + 1, dtype=np.uint64)
        self.lat = <uint64_t*><size_t>self.latency.ctypes.data
        self.siz = <uint64_t*><size_t>self.sizes.ctypes.data

    def __dealloc__(self):
        if self.insert != NULL:
            sqlite3_finalize(self.insert)
        if self.db != NULL:
            sqlite3_close_v2(self.db)
        free(self.pending.recs)
        free(self.writing.recs)
        pthread_cond_destroy(&self.cv)
        pthread_mutex_destroy(&self.mu)

    def submit(self, Journal journal) -> int:
        """Move the journal's pending records to the writer; returns the number the next
        record will get (what a batch answered now must wait for)."""
        cdef size_t n = journal.n
        cdef int rc
        if n == 0:
            return self.submitted_no
        if journal.next_no - n != self.submitted_no:
            raise RuntimeError("journal records were taken by someone else")
        with nogil:
            pthread_mutex_lock(&self.mu)
            rc = buf_append(&self.pending, journal.recs, n)
            pthread_cond_signal(&self.cv)
            pthread_mutex_unlock(&self.mu)
        if rc != 0:
            raise MemoryError("journal queue")
        journal.n = 0
        self.submitted_no += n
        return self.submitted_no

    def run(self) -> None:
        """The writer thread's body (start it in a threading.Thread); returns after stop()
        once everything submitted is durable, or after a failed commit."""
        with nogil:
            self._run()

    cdef void _run(self) noexcept nogil:
        cdef Buf tmp
        cdef bint catch_up
        while True:
            pthread_mutex_lock(&self.mu)
            while self.pending.n == 0 and not self.stopping and not self.catch_up:
                pthread_cond_wait(&self.cv, &self.mu)
            if self.pending.n == 0 and not self.catch_up:
                pthread_mutex_unlock(&self.mu)
                return
            catch_up = self.catch_up
            self.catch_up = False
            tmp = self.writing                       # swap: writing is empty here
            self.writing = self.pending
            self.pending = tmp
            self.pending.n = 0
            self.pending.first_no = self.writing.first_no + self.writing.n
            pthread_mutex_unlock(&self.mu)
            if self.writing.n and self._commit_until_done() != 0:
                return
            if catch_up:
                self._catch_up()

    cdef int _commit_until_done(self) noexcept nogil:
        """Commit ``writing``; while the disk is full keep its records and retry every
        full_retry_ms (the loop refuses new requests meanwhile). -1: stop the writer."""
        cdef int rc = self._commit()
        cdef uint32_t waited_us
        while rc == 1:
            waited_us = 0
            while waited_us < self.full_retry_ms * 1000:
                usleep(SLEEP_STEP_US)
                waited_us += SLEEP_STEP_US
                pthread_mutex_lock(&self.mu)
                if self.stopping:
                    # Stopping with records that never became durable: nothing was answered
                    # for them; say so (the loop reports failure()).
                    pthread_mutex_unlock(&self.mu)
                    self.failed = True
                    return -1
                pthread_mutex_unlock(&self.mu)
            self.full_retries += 1
            rc = self._commit()
        return rc

    cdef bint _is_full(self) noexcept nogil:
        cdef int code = sqlite3_extended_errcode(self.db) & 0xff
        cdef int sys_errno = sqlite3_system_errno(self.db)
        return code == SQLITE_FULL or (code == SQLITE_IOERR
                                       and (sys_errno == ENOSPC or sys_errno == EDQUOT))

    cdef int _commit(self) noexcept nogil:
        """0 done; 1 the disk is full (``writing`` kept, ``done`` rows already in); -1 any
        other error (the writer stops)."""
        cdef uint64_t one = 1, started, us
        cdef size_t part
        cdef int64_t day, kinds
        cdef int rc
        started = monotonic_ns()
        while self.done < self.writing.n:
            part = day_run(self.writing.recs + self.done, self.writing.n - self.done,
                           MAX_ROW_RECORDS, &day, &kinds)
            sqlite3_bind_int64(self.insert, 1, <long long>(self.writing.first_no + self.done))
            sqlite3_bind_int64(self.insert, 2, <long long>part)
            sqlite3_bind_int64(self.insert, 3, realtime_us())
            sqlite3_bind_blob(self.insert, 4, self.writing.recs + self.done,
                              <int>(part * JREC_BYTES), NULL)
            sqlite3_bind_int64(self.insert, 5, day)
            sqlite3_bind_int64(self.insert, 6, kinds)
            rc = sqlite3_step(self.insert)
            sqlite3_reset(self.insert)
            if rc != SQLITE_DONE:
                strncpy_safe(self.errbuf, sqlite3_errmsg(self.db), 255)
                if self._is_full():
                    self.full = True             # kept: retried by _commit_until_done
                    write(self.efd, &one, 8)
                    return 1
                # Nothing after this can be made durable: report and stop writing.
                self.failed = True
                write(self.efd, &one, 8)
                return -1
            self.done += part
        self.done = 0
        self.full = False
        us = (monotonic_ns() - started) // 1000
        self.lat[bucket(LAT_B, N_LAT, us)] += 1
        self.siz[bucket(SIZE_B, N_SIZE, self.writing.n)] += 1
        self.latency_sum_us += us
        self.records += self.writing.n
        self.commits += 1
        self.durable_no = self.writing.first_no + self.writing.n
        self.writing.n = 0
        write(self.efd, &one, 8)
        return 0

    cdef void _catch_up(self) noexcept nogil:
        # Under steady load a checkpoint on another connection never catches the writer:
        # frames arrive while it copies, so SQLite never starts the WAL over and the file
        # grows without bound, each fsync then also extending it. Run here, between two
        # commits, the last few frames are copied with no writer racing, and the next
        # commit rewrites the WAL from its start (an overwrite: a cheaper fsync, fixed size).
        # A failure (e.g. SQLITE_BUSY from another checkpointer) only leaves it for next time.
        cdef int log = 0, ckpt = 0
        cdef uint64_t started = monotonic_ns(), us
        sqlite3_wal_checkpoint_v2(self.db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &ckpt)
        us = (monotonic_ns() - started) // 1000
        self.catch_ups += 1
        self.catch_up_us_sum += us

    def request_catch_up(self) -> None:
        """Ask the writer to finish a WAL checkpoint between its next two commits (the
        background checkpointer calls this once it has copied all but a few frames)."""
        with nogil:
            pthread_mutex_lock(&self.mu)
            self.catch_up = True
            pthread_cond_signal(&self.cv)
            pthread_mutex_unlock(&self.mu)

    @property
    def wal_frames(self) -> int:
        """Frames in the WAL after the last commit (from SQLite's WAL hook)."""
        return self.wal.frames

    @property
    def wal_restarts(self) -> int:
        """Commits that began writing the WAL from its start again."""
        return self.wal.restarts

    def stop(self) -> None:
        with nogil:
            pthread_mutex_lock(&self.mu)
            self.stopping = True
            pthread_cond_signal(&self.cv)
            pthread_mutex_unlock(&self.mu)

    def failure(self) -> str | None:
        """The SQLite error that stopped the writer, if any."""
        if self.failed:
            return self.errbuf.decode(errors="replace")
        return None

    def full_error(self) -> str | None:
        """The error of a commit that failed for lack of space and is being retried (the
        records are kept), None when the last commit succeeded."""
        if self.full and not self.failed:
            return self.errbuf.decode(errors="replace")
        return None


cdef inline void strncpy_safe(char* dst, const char* src, int n) noexcept nogil:
    cdef int i = 0
    while i < n and src[i] != 0:
        dst[i] = src[i]
        i += 1
    dst[i] = 0
