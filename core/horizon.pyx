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
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import numpy as np

FILED_DTYPE = np.dtype([("entry", "<u8", (FILED_ENTRY_WORDS,)), ("terminal", "<u4"),
                        ("seq", "<u4")])
assert FILED_DTYPE.itemsize == sizeof(Filed)

cdef enum:
    ROWS_FIRST = 1024            # a new generation's rows at least (then the last one's count)
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


cdef void gen_free(Gen* g) noexcept nogil:
    free(g.rows)
    free(g.index)
    free(g.hi)
    memset(g, 0, sizeof(Gen))


cdef int gen_init(Gen* g, uint32_t day, uint64_t cap, uint32_t n_terminals) noexcept nogil:
    memset(g, 0, sizeof(Gen))
    g.rows = <Filed*>malloc(cap * sizeof(Filed))
    g.icap = pow2_at_least(cap * 2)
    g.index = <uint32_t*>calloc(g.icap, sizeof(uint32_t))
    g.hi = <uint32_t*>calloc(max(n_terminals, 1), sizeof(uint32_t))
    if g.rows == NULL or g.index == NULL or g.hi == NULL:
        gen_free(g)
        return -1
    g.cap = cap
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
        grown = <Filed*>realloc(g.rows, (g.cap + g.cap // 2) * sizeof(Filed))
        if grown == NULL:
            return -1
        g.rows = grown
        g.cap += g.cap // 2
    if (g.n + 1) * 2 > g.icap:
        icap = g.icap * 2
        index = <uint32_t*>calloc(icap, sizeof(uint32_t))
        if index == NULL:
            return -1
        for i in range(g.n):
            h = home(g.rows[i].terminal, g.rows[i].seq, icap)
            while index[h] != 0:
                h = (h + 1) & (icap - 1)
            index[h] = <uint32_t>(i + 1)
        free(g.index)
        g.index = index
        g.icap = icap
    return 0


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
        cdef Gen* g = &self.gens[0]
        cdef uint64_t h = home(terminal, seq, g.icap)
        cdef Filed* f
        while g.index[h] != 0:           # one walk: the same number again, or a free slot
            f = &g.rows[g.index[h] - 1]
            if f.seq == seq and f.terminal == terminal:
                memcpy(f.entry, entry, sizeof(uint64_t) * FILED_ENTRY_WORDS)   # the newer
                return
            h = (h + 1) & (g.icap - 1)
        memcpy(g.rows[g.n].entry, entry, sizeof(uint64_t) * FILED_ENTRY_WORDS)
        g.rows[g.n].terminal = terminal
        g.rows[g.n].seq = seq
        g.n += 1
        g.index[h] = <uint32_t>g.n
        if terminal < self.n_terminals and seq > g.hi[terminal]:
            g.hi[terminal] = seq
        self.rows += 1

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

    def export(self) -> dict:
        """The filed rows (oldest date first), each date's (day, rows) and the per-terminal
        numbers dropped, as arrays for a checkpoint."""
        rows = np.empty(self.rows, dtype=FILED_DTYPE)
        gens = np.zeros((self.n_gens, 2), dtype=np.uint64)
        cdef unsigned char[::1] out = rows.view(np.uint8) if self.rows else None
        cdef uint64_t at = 0
        cdef int g
        for g in range(<int>self.n_gens - 1, -1, -1):
            if self.gens[g].n:
                memcpy(&out[at], self.gens[g].rows, self.gens[g].n * sizeof(Filed))
            at += self.gens[g].n * sizeof(Filed)
            gens[self.n_gens - 1 - g] = (self.gens[g].day, self.gens[g].n)
        dropped = np.zeros(self.n_terminals, dtype=np.uint64)
        if self.n_terminals:
            dropped[:] = <uint64_t[:self.n_terminals]>self.dropped
        return {"horizon_rows": rows, "horizon_gens": gens, "horizon_dropped": dropped}

    def load(self, rows, gens, dropped) -> None:
        """Refill from export() (before any request is filed)."""
        cdef const unsigned char[::1] raw
        cdef const Filed* f
        cdef uint64_t at = 0, i, n
        rows = np.ascontiguousarray(rows, dtype=FILED_DTYPE)
        if self.n_gens or int(np.asarray(gens)[:, 1].sum() if len(gens) else 0) != len(rows):
            raise ValueError("horizon rows do not match their dates, or horizon not empty")
        raw = rows.view(np.uint8) if len(rows) else b""
        for day, count in np.asarray(gens, dtype=np.uint64).tolist():
            for i in range(<uint64_t>count):
                if self.reserve(<uint32_t>day) != 0:
                    raise MemoryError("idempotency horizon: rows_max reached while loading")
                f = <const Filed*>&raw[(at + i) * sizeof(Filed)]
                self.file(f.terminal, f.seq, f.entry)
            at += count
        n = min(len(dropped), self.n_terminals)
        for i in range(n):
            self.dropped[i] = int(dropped[i])

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

    def settlement_day(self, int64_t ts_us) -> int:
        return self.day_of(ts_us)

    def forgotten(self, uint32_t terminal, uint32_t seq, uint64_t modulus) -> bool:
        return self.forgot(terminal, seq, modulus)
