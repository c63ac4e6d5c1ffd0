# cython: language_level=3
"""The day-long idempotency horizon: every request a terminal's ring has forgotten stays
findable by (terminal, STAN or sequence) for ``days`` settlement dates (SPEC §5 "Exactly once
for a business day").

The ring (core/state.pyx) keeps each terminal's last ``ring_size`` requests and answers most
retransmissions; the slot a new request takes held an older one, which is *filed* here
(core/ledger.pyx ring_put) instead of being lost. Filed requests are kept in one hash table per
settlement date (a generation): a lookup looks at the newest first, and a settlement date
that falls out of the horizon is dropped whole, without a sweep of the others. The terminal
numbering is global (every region holds the whole terminal registry), so (terminal, seq)
carries the acquiring region.

What was forgotten is still known in outline: per terminal, the newest sequence number
dropped. A reversal for a number at or before it that is found nowhere is outside the horizon
(``forgot``): its original may have been approved, so the switch refuses it (25) rather than
acknowledge it with no effect.

Memory: 48 bytes a row plus 8 to 16 bytes of index (``stats``). Bounded by ``rows_max``
(``reserve`` fails past it and the request is declined 96: never a row lost silently).
"""

from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memmove, memset
from posix.mman cimport (MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ, PROT_WRITE,
                         madvise, mmap, munmap)
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import numpy as np

cdef extern from "<sys/mman.h>" nogil:
    # Linux (pyconfig.h defines _GNU_SOURCE): not in Cython's posix.mman.
    int MADV_HUGEPAGE
    int MREMAP_MAYMOVE
    void* mremap(void* old_address, size_t old_size, size_t new_size, int flags, ...)

FILED_DTYPE = np.dtype([("entry", "<u8", (FILED_ENTRY_WORDS,)), ("terminal", "<u4"),
                        ("seq", "<u4")])
assert FILED_DTYPE.itemsize == sizeof(Filed)

cdef enum:
    ROWS_FIRST = 1024            # a new generation's rows at least (then the last one's count)
    DIRTY_MAX = 1 << 22          # changed rows noted between checkpoints (32 MiB)
    CST_OFFSET_S = 8 * 3600
    DAYS_1970_TO_2000 = 10957


cdef inline uint64_t home(uint32_t terminal, uint32_t seq, uint64_t icap) noexcept nogil:
    cdef uint64_t k = (<uint64_t>terminal << 32) | seq
    k ^= k >> 33
    k *= <uint64_t>0xff51afd7ed558ccd
    k ^= k >> 33
    return k & (icap - 1)


cdef inline double now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1e9 + ts.tv_nsec


cdef inline uint64_t mix_index(uint64_t i) noexcept nogil:
    """Probes in a scattered order (a day's retransmissions are not in filing order)."""
    i ^= i >> 31
    i *= <uint64_t>0x9e3779b97f4a7c15
    return i ^ (i >> 29)


cdef inline uint64_t pow2_at_least(uint64_t n) noexcept nogil:
    cdef uint64_t p = 16
    while p < n:
        p <<= 1
    return p


# A date's rows and index reach hundreds of MiB, touched at random (the index) or grown in
# place: mapped directly, in transparent huge pages where the kernel has them (512 times
# fewer page faults and TLB misses than 4 KiB pages: ~10% of the switch's time at 300k
# requests a second), grown by mremap (no copy), zeroed by the kernel.
cdef void* big_alloc(size_t nbytes) noexcept nogil:
    cdef void* p = mmap(NULL, nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        return NULL
    madvise(p, nbytes, MADV_HUGEPAGE)       # advice: refused where there are none
    return p


cdef void* big_grow(void* p, size_t old_bytes, size_t new_bytes) noexcept nogil:
    cdef void* q = mremap(p, old_bytes, new_bytes, MREMAP_MAYMOVE)
    if q == MAP_FAILED:
        return NULL
    madvise(q, new_bytes, MADV_HUGEPAGE)
    return q


cdef void big_free(void* p, size_t nbytes) noexcept nogil:
    if p != NULL:
        munmap(p, nbytes)


cdef void gen_free(Gen* g) noexcept nogil:
    big_free(g.rows, g.cap * sizeof(Filed))
    big_free(g.index, g.icap * sizeof(uint32_t))
    free(g.hi)
    memset(g, 0, sizeof(Gen))


cdef int gen_init(Gen* g, uint32_t day, uint64_t cap, uint32_t n_terminals) noexcept nogil:
    memset(g, 0, sizeof(Gen))
    g.cap = cap
    g.rows = <Filed*>big_alloc(cap * sizeof(Filed))
    g.icap = pow2_at_least(cap * 2)
    g.index = <uint32_t*>big_alloc(g.icap * sizeof(uint32_t))
    g.hi = <uint32_t*>calloc(max(n_terminals, 1), sizeof(uint32_t))
    if g.rows == NULL or g.index == NULL or g.hi == NULL:
        gen_free(g)
        return -1
    g.day = day
    return 0


cdef uint64_t* gen_find(Gen* g, uint32_t terminal, uint32_t seq) noexcept nogil:
    cdef uint64_t h = home(terminal, seq, g.icap)
    cdef uint32_t pos
    cdef Filed* f
    while True:
        pos = g.index[h]
        if pos == 0:
            return NULL
        f = &g.rows[pos - 1]
        if f.seq == seq and f.terminal == terminal:
            return f.entry
        h = (h + 1) & (g.icap - 1)


cdef int gen_room(Gen* g) noexcept nogil:
    """Room for one more row: afterwards an append cannot fail. -1 when out of memory."""
    cdef Filed* grown
    cdef uint32_t* index
    cdef uint64_t icap, i, h
    if g.n == g.cap:
        # By half: a day's rows are the bulk of the memory, and doubling would leave up to
        # half of it unused (the next date starts at this one's size anyway).
        grown = <Filed*>big_grow(g.rows, g.cap * sizeof(Filed),
                                 (g.cap + g.cap // 2) * sizeof(Filed))
        if grown == NULL:
            return -1
        g.rows = grown
        g.cap += g.cap // 2
    if (g.n + 1) * 2 > g.icap:
        icap = g.icap * 2
        index = <uint32_t*>big_alloc(icap * sizeof(uint32_t))
        if index == NULL:
            return -1
        for i in range(g.n):
            h = home(g.rows[i].terminal, g.rows[i].seq, icap)
            while index[h] != 0:
                h = (h + 1) & (icap - 1)
            index[h] = <uint32_t>(i + 1)
        big_free(g.index, g.icap * sizeof(uint32_t))
        g.index = index
        g.icap = icap
    return 0


cdef inline int64_t gen_file(Gen* g, uint32_t terminal, uint32_t seq, const uint64_t* entry,
                             uint32_t n_terminals) noexcept nogil:
    """File a row (room made by gen_room): the position of the row of the same number it
    replaced (the newer wins), or -1 when appended."""
    cdef uint64_t h = home(terminal, seq, g.icap)
    cdef Filed* f
    if terminal < n_terminals and seq > g.hi[terminal]:
        # Above every number of its terminal here, so not here: find a free slot without
        # reading the rows the occupied ones point to (each a cache miss).
        while g.index[h] != 0:
            h = (h + 1) & (g.icap - 1)
    else:
        while g.index[h] != 0:       # one walk: the same number again, or a free slot
            f = &g.rows[g.index[h] - 1]
            if f.seq == seq and f.terminal == terminal:
                memcpy(f.entry, entry, sizeof(uint64_t) * FILED_ENTRY_WORDS)
                return g.index[h] - 1
            h = (h + 1) & (g.icap - 1)
    memcpy(g.rows[g.n].entry, entry, sizeof(uint64_t) * FILED_ENTRY_WORDS)
    g.rows[g.n].terminal = terminal
    g.rows[g.n].seq = seq
    g.n += 1
    g.index[h] = <uint32_t>g.n
    if terminal < n_terminals and seq > g.hi[terminal]:
        g.hi[terminal] = seq
    return -1


cdef inline void memmove_gens(Gen* gens, uint32_t n) noexcept nogil:
    """Make gens[0] free: every generation one place older."""
    cdef int i
    for i in range(<int>n, 0, -1):
        gens[i] = gens[i - 1]


cdef class Horizon:
    def __cinit__(self, uint32_t days=2, uint64_t rows_max=1 << 26, uint32_t n_terminals=0,
                  int cutover_s=23 * 3600):
        if not 1 <= days < HORIZON_GENS_MAX:
            raise ValueError(f"idempotency days must be 1..{HORIZON_GENS_MAX - 1}")
        if rows_max >= 0xffffffff:
            raise ValueError("idempotency rows at most 2^32 - 2")
        self.days = days
        self.rows_max = rows_max
        self.cutover_s = cutover_s
        self.n_terminals = n_terminals
        self.dropped = <uint64_t*>calloc(max(n_terminals, 1), sizeof(uint64_t))
        if self.dropped == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef uint32_t g
        for g in range(self.n_gens):
            gen_free(&self.gens[g])
        free(self.dropped)
        free(self.dirty)

    cdef uint32_t day_of(self, int64_t ts_us) noexcept nogil:
        """A record's settlement date (protocols.clearing.settlement_days), days since 2000."""
        cdef int64_t local_s = ts_us // 1000000 + CST_OFFSET_S
        cdef int64_t days = ((local_s + (86400 - self.cutover_s) % 86400) // 86400
                             - DAYS_1970_TO_2000)
        return <uint32_t>days if days > 0 else 0

    cdef uint64_t* find(self, uint32_t terminal, uint32_t seq) noexcept nogil:
        """The newest filed entry of (terminal, seq), or NULL. A number above every number
        of its terminal filed on a date is not looked for there: a new request (the common
        case) costs no probe of an index that no cache holds."""
        cdef uint32_t g
        cdef uint64_t* e
        for g in range(self.n_gens):
            if terminal < self.n_terminals and seq > self.gens[g].hi[terminal]:
                continue
            e = gen_find(&self.gens[g], terminal, seq)
            if e != NULL:
                self.changed(g, <uint64_t>(<Filed*>e - self.gens[g].rows))
                return e
        return NULL

    cdef void drop_oldest(self) noexcept nogil:
        """Forget the oldest settlement date, remembering each terminal's newest seq in it."""
        cdef Gen* g = &self.gens[self.n_gens - 1]
        cdef uint64_t i
        for i in range(g.n):
            if g.rows[i].terminal < self.n_terminals:
                self.dropped[g.rows[i].terminal] = <uint64_t>g.rows[i].seq + 1
        self.rows -= g.n
        gen_free(g)
        self.n_gens -= 1

    cdef int reserve(self, uint32_t day) noexcept nogil:
        """Room to file one request on settlement date ``day`` (a later date than the newest
        opens its generation and drops those past the horizon; an earlier one is filed with
        the newest, kept longer). -1, nothing changed, when full or out of memory."""
        cdef Gen fresh
        cdef uint64_t cap
        if self.rows >= self.rows_max:
            return -1
        if self.n_gens == 0 or day > self.gens[0].day:
            # A date is like the one before it: size the new one so it rarely grows.
            cap = self.gens[0].n if self.n_gens and self.gens[0].n > ROWS_FIRST else ROWS_FIRST
            if gen_init(&fresh, day, cap, self.n_terminals) != 0:
                return -1
            while self.n_gens and (self.gens[self.n_gens - 1].day + self.days <= day
                                   or self.n_gens == HORIZON_GENS_MAX):
                self.drop_oldest()
            memmove_gens(self.gens, self.n_gens)
            self.gens[0] = fresh
            self.n_gens += 1
        return gen_room(&self.gens[0])

    cdef void file(self, uint32_t terminal, uint32_t seq, const uint64_t* entry) noexcept nogil:
        """Keep a request the ring is about to forget (room reserved by ``reserve``)."""
        cdef int64_t replaced = gen_file(&self.gens[0], terminal, seq, entry, self.n_terminals)
        if replaced < 0:
            self.rows += 1
        else:
            self.changed(0, <uint64_t>replaced)

    cdef void changed(self, uint32_t g, uint64_t row) noexcept nogil:
        """Row ``row`` of generation ``g`` may be written: if a checkpoint segment already
        holds it, the next segment holds it again. Past DIRTY_MAX noted (or out of memory),
        every row goes into the next segment instead (a new epoch: exports before it are
        not confirmed)."""
        cdef uint64_t* grown
        cdef uint32_t i
        if row >= self.gens[g].exported:
            return
        if self.n_dirty == self.dirty_cap:
            grown = NULL
            if self.dirty_cap < DIRTY_MAX:
                grown = <uint64_t*>realloc(self.dirty, max(self.dirty_cap * 2, 1024) * 8)
            if grown == NULL:
                self.epoch += 1
                self.n_dirty = 0
                for i in range(self.n_gens):
                    self.gens[i].saved = 0
                    self.gens[i].exported = 0
                return
            self.dirty = grown
            self.dirty_cap = max(self.dirty_cap * 2, 1024)
        self.dirty[self.n_dirty] = (<uint64_t>self.gens[g].day << 32) | row
        self.n_dirty += 1

    cdef bint forgot(self, uint32_t terminal, uint32_t seq, uint64_t modulus) noexcept nogil:
        """Whether ``seq`` is at or before the newest number of this terminal the horizon
        dropped (numbers count modulo ``modulus`` and wrap): a request found nowhere that
        may have been decided before the horizon."""
        cdef uint64_t hi, ahead
        if terminal >= self.n_terminals or self.dropped[terminal] == 0:
            return False
        hi = (self.dropped[terminal] - 1) % modulus
        ahead = (seq % modulus + modulus - hi) % modulus
        return not (0 < ahead < modulus // 2)

    # ---- Python API: checkpoints, figures, tests -------------------------------------------

    def export(self, bint since_confirmed=False) -> dict:
        """The horizon as a checkpoint's arrays: its segment ``horizon_rows`` with the
        (day, rows) runs they belong to (``horizon_rows_at``), each date's (day, rows) held
        (``horizon_gens``, oldest first), the per-terminal numbers dropped, and the
        ``horizon_mark`` to ``confirm`` once the checkpoint is written. The segment holds
        every row, or ``since_confirmed`` only the rows filed or changed since the
        checkpoints confirmed, whose segments it then needs (switch/snapshots.py chain)."""
        cdef int g
        cdef Gen* gen
        cdef uint64_t first, at = 0, i, n_rows = 0
        cdef unsigned char[::1] out
        cdef const uint64_t[::1] pick
        noted = np.zeros(0, dtype=np.uint64)
        if since_confirmed and self.n_dirty:
            noted = np.unique(np.asarray(<uint64_t[:self.n_dirty]>self.dirty))
        picks, runs = [], []
        gens = np.zeros((self.n_gens, 2), dtype=np.uint64)
        for g in range(<int>self.n_gens - 1, -1, -1):
            gen = &self.gens[g]
            gens[self.n_gens - 1 - g] = (gen.day, gen.n)
            first = gen.saved if since_confirmed else 0
            rows = noted[(noted >> 32) == gen.day] & 0xffffffff
            rows = np.ascontiguousarray(rows[rows < first])
            picks.append(rows)
            if len(rows) + gen.n - first:
                runs.append((gen.day, len(rows) + gen.n - first))
            n_rows += len(rows) + gen.n - first
        # memcpy, not numpy: a structured row with a sub-array copies field by field.
        out_rows = np.empty(n_rows, dtype=FILED_DTYPE)
        if n_rows:
            out = out_rows.view(np.uint8)
        for g in range(<int>self.n_gens - 1, -1, -1):
            gen = &self.gens[g]
            first = gen.saved if since_confirmed else 0
            pick = picks[self.n_gens - 1 - g]
            for i in range(<uint64_t>pick.shape[0]):
                memcpy(&out[at], &gen.rows[pick[i]], sizeof(Filed))
                at += sizeof(Filed)
            if gen.n > first:
                memcpy(&out[at], &gen.rows[first], (gen.n - first) * sizeof(Filed))
                at += (gen.n - first) * sizeof(Filed)
            gen.exported = gen.n
        dropped = np.zeros(self.n_terminals, dtype=np.uint64)
        if self.n_terminals:
            dropped[:] = <uint64_t[:self.n_terminals]>self.dropped
        return {"horizon_rows": out_rows,
                "horizon_rows_at": np.array(runs, dtype=np.uint64).reshape(-1, 2),
                "horizon_gens": gens, "horizon_dropped": dropped,
                "horizon_mark": np.array([self.epoch, self.dirty_base + self.n_dirty,
                                          not since_confirmed], dtype=np.uint64)}

    def confirm(self, gens, mark) -> bool:
        """The checkpoint of an export(``gens``, ``mark``) is written: its rows need no
        later segment. False (nothing changed) for an export from before an overflow."""
        cdef uint64_t done = int(mark[1])
        cdef uint32_t g
        if int(mark[0]) != self.epoch:
            return False
        for day, n in np.asarray(gens, dtype=np.uint64).tolist():
            for g in range(self.n_gens):
                if self.gens[g].day == day:
                    self.gens[g].saved = max(self.gens[g].saved, min(<uint64_t>n,
                                                                     self.gens[g].n))
        if done > self.dirty_base:
            assert done - self.dirty_base <= self.n_dirty, "confirmed past what was noted"
            memmove(self.dirty, &self.dirty[done - self.dirty_base],
                    (self.n_dirty - (done - self.dirty_base)) * 8)
            self.n_dirty -= done - self.dirty_base
            self.dirty_base = done
        return True

    def load(self, segments, gens, dropped) -> None:
        """Refill (before any request is filed) to the dates and row counts ``gens`` from the
        segments of a checkpoint's chain, oldest first, each (rows, runs) as ``export``
        made them: a row filed again replaces the older, and rows of dates no longer held
        are skipped. Everything loaded counts as confirmed."""
        cdef const unsigned char[::1] raw
        cdef const Filed* f
        cdef uint64_t at, i
        cdef int g
        want = np.asarray(gens, dtype=np.uint64).reshape(-1, 2)
        if (self.n_gens or len(want) > HORIZON_GENS_MAX
                or np.any(np.diff(want[:, 0].astype(np.int64)) <= 0)):
            raise ValueError("horizon dates not ascending, too many, or horizon not empty")
        for day, count in want.tolist():
            if self.open_gen(day, max(count, ROWS_FIRST)) != 0:
                raise MemoryError("idempotency horizon")
        for rows, runs in segments:
            rows = np.ascontiguousarray(rows, dtype=FILED_DTYPE)
            raw = rows.view(np.uint8) if len(rows) else b""
            at = 0
            for day, count in np.asarray(runs, dtype=np.uint64).reshape(-1, 2).tolist():
                g = self.gen_of(day)
                for i in range(<uint64_t>count if g >= 0 else 0):
                    if gen_room(&self.gens[g]) != 0:
                        raise MemoryError("idempotency horizon")
                    f = <const Filed*>&raw[(at + i) * sizeof(Filed)]
                    if gen_file(&self.gens[g], f.terminal, f.seq, f.entry, self.n_terminals) < 0:
                        self.rows += 1
                at += count
            if at != len(rows):
                raise ValueError("horizon segment: its runs do not add up to its rows")
        for g in range(self.n_gens):
            if self.gens[g].n != want[self.n_gens - 1 - g, 1]:
                raise ValueError(f"horizon date {self.gens[g].day}: {self.gens[g].n} rows in its "
                                 f"segments, the checkpoint says {want[self.n_gens - 1 - g, 1]}")
            self.gens[g].saved = self.gens[g].exported = self.gens[g].n
        for i in range(min(len(dropped), self.n_terminals)):
            self.dropped[i] = int(dropped[i])

    cdef int open_gen(self, uint32_t day, uint64_t cap) noexcept nogil:
        """A newest generation for ``day`` (later than every held one)."""
        cdef Gen fresh
        if gen_init(&fresh, day, cap, self.n_terminals) != 0:
            return -1
        memmove_gens(self.gens, self.n_gens)
        self.gens[0] = fresh
        self.n_gens += 1
        return 0

    cdef int gen_of(self, uint32_t day) noexcept nogil:
        cdef int g
        for g in range(self.n_gens):
            if self.gens[g].day == day:
                return g
        return -1

    def stats(self) -> dict:
        """Rows held, bytes held (rows and indexes) and the dates held."""
        cdef uint64_t nbytes = 0
        cdef uint32_t g
        for g in range(self.n_gens):
            nbytes += self.gens[g].cap * sizeof(Filed) + self.gens[g].icap * sizeof(uint32_t)
        return {"rows": int(self.rows), "bytes": int(nbytes), "rows_max": int(self.rows_max),
                "days": int(self.days),
                "dates": [int(self.gens[g].day) for g in range(self.n_gens)]}

    def measure(self, uint64_t rows, uint64_t probes, uint32_t day=1) -> dict:
        """bench/horizon.py: file ``rows`` synthetic requests (spread over the terminals, as
        rings evict them) on settlement date ``day``, then look ``probes`` up that are held
        and ``probes`` that are not (what every new request costs); nanoseconds each, and the
        bytes held per row. Uses this (empty) horizon."""
        cdef uint64_t i, k, found = 0
        cdef uint64_t entry[5]
        cdef uint32_t terms = max(self.n_terminals, 1)
        cdef double t0, t1, t2, t3
        if self.rows:
            raise ValueError("measure() needs an empty horizon")
        memset(entry, 0, sizeof(entry))
        t0 = now_ns()
        for i in range(rows):
            entry[2] = i
            if self.reserve(day) != 0:
                raise MemoryError("rows_max reached")
            self.file(<uint32_t>(i % terms), <uint32_t>(i // terms), entry)
        t1 = now_ns()
        for i in range(probes):
            k = mix_index(i) % rows
            found += self.find(<uint32_t>(k % terms), <uint32_t>(k // terms)) != NULL
        t2 = now_ns()
        for i in range(probes):
            found += self.find(<uint32_t>(i % terms), <uint32_t>(rows // terms + 1 + i)) != NULL
        t3 = now_ns()
        if found != probes:
            raise AssertionError(f"{found} found of {probes} held")
        return {"rows": int(rows), "file_ns": (t1 - t0) / max(rows, 1),
                "hit_ns": (t2 - t1) / max(probes, 1), "miss_ns": (t3 - t2) / max(probes, 1),
                "bytes_per_row": self.stats()["bytes"] / max(rows, 1)}

    def file_for_test(self, uint32_t day, uint32_t terminal, uint32_t seq, uint64_t word) -> None:
        """File a request whose entry is ``word`` in its third word (tests)."""
        cdef uint64_t entry[5]
        memset(entry, 0, sizeof(entry))
        entry[2] = word
        if self.reserve(day) != 0:
            raise MemoryError("rows_max reached")
        self.file(terminal, seq, entry)

    def lookup_for_test(self, uint32_t terminal, uint32_t seq):
        """The third word of the entry filed for (terminal, seq), or None (tests)."""
        cdef uint64_t* e = self.find(terminal, seq)
        return None if e == NULL else int(e[2])

    def settlement_day(self, int64_t ts_us) -> int:
        return self.day_of(ts_us)

    def forgotten(self, uint32_t terminal, uint32_t seq, uint64_t modulus) -> bool:
        return self.forgot(terminal, seq, modulus)
