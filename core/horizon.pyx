# cython: language_level=3
"""The day-long idempotency horizon: every request a terminal's ring has forgotten stays
findable by (terminal, STAN or sequence) for ``days`` settlement dates (SPEC §5 "Exactly once
for a business day").

The ring (core/state.pyx) keeps each terminal's last ``ring_size`` requests; the slot a new
request takes held an older one, which is *filed* here (core/ledger.pyx ring_put). Filed
requests are kept per settlement date (a generation), the newest looked at first; a date that
falls out of the horizon is dropped whole, its memory taken by the next date. Terminal numbers
are global (every region holds the whole registry), so (terminal, seq) names the acquirer.

A terminal numbers its requests one after another, so a date keeps them in *pages* of 16
consecutive numbers of one terminal, found through a hash index by (terminal, number / 16)
and, for filing, through the terminal's page filed last: filing is a copy into a page in
cache, and the index is written once in 16 filings (against a hash slot per request, half
the horizon's share of the switch's time: bench/README.md). A number above every number of
its terminal on a date is not looked for there: a new request costs no probe.

Per terminal, the newest number dropped is kept: a reversal for a number at or before it
that is found nowhere is outside the horizon (``forgot``), and refused 25 rather than
acknowledged with no effect.

Checkpoints (switch/store/snapshots.py) write the horizon in segments: each page knows which slots
a checkpoint taken (``exported``) and written (``saved``) hold, and a date lists its pages
not wholly saved, so a checkpoint copies only what changed since the last one written.

Memory: 41 bytes a request in full pages, plus 2 to 4 bytes of index and 16 bytes per
terminal and date (``stats``). Bounded by ``rows_max`` requests and ``rows_max / 8`` pages
plus one per terminal and date (a terminal whose numbers jump leaves pages part empty); past
either, ``reserve`` fails and the request is declined 96: never a row lost silently.
"""

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset
from posix.mman cimport (MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ, PROT_WRITE,
                         madvise, mmap, munmap)
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import numpy as np

cdef extern from "<sys/mman.h>" nogil:
    # Linux (pyconfig.h defines _GNU_SOURCE): not in Cython's posix.mman.
    int MADV_HUGEPAGE
    int MREMAP_MAYMOVE
    void* mremap(void* old_address, size_t old_size, size_t new_size, int flags, ...)

cdef extern from *:
    int popcount16 "__builtin_popcount"(unsigned int) nogil

FILED_DTYPE = np.dtype([("entry", "<u8", (FILED_ENTRY_WORDS,)), ("terminal", "<u4"),
                        ("seq", "<u4")])
assert FILED_DTYPE.itemsize == sizeof(Filed)
assert sizeof(Page) == PAGE_SLOTS * FILED_ENTRY_WORDS * 8 + 16
assert sizeof(TermDay) == 16

cdef enum:
    PAGES_FIRST = 64             # a new generation's pages at least (then the last one's)
    CST_OFFSET_S = 8 * 3600
    DAYS_1970_TO_2000 = 10957
    ENTRY_BYTES = FILED_ENTRY_WORDS * 8


cdef inline uint64_t home(uint32_t terminal, uint32_t base, uint64_t icap) noexcept nogil:
    cdef uint64_t k = (<uint64_t>terminal << 32) | base
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


# A date's pages and index reach hundreds of MiB, the index touched at random: mapped
# directly, in transparent huge pages where the kernel has them (fewer page faults and TLB
# misses than 4 KiB pages), grown by mremap (no copy), zeroed by the kernel.
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
    big_free(g.pages, g.cap * sizeof(Page))
    big_free(g.index, g.icap * sizeof(uint32_t))
    free(g.term)
    free(g.listed)
    memset(g, 0, sizeof(Gen))


cdef int gen_init(Gen* g, uint32_t day, uint64_t cap, uint32_t n_terminals) noexcept nogil:
    memset(g, 0, sizeof(Gen))
    g.cap = cap
    g.icap = pow2_at_least(cap * 2)
    g.pages = <Page*>big_alloc(cap * sizeof(Page))
    g.index = <uint32_t*>big_alloc(g.icap * sizeof(uint32_t))
    g.term = <TermDay*>calloc(max(n_terminals, 1), sizeof(TermDay))
    g.listed = <uint32_t*>calloc(cap, sizeof(uint32_t))
    if g.pages == NULL or g.index == NULL or g.term == NULL or g.listed == NULL:
        gen_free(g)
        return -1
    g.day = day
    return 0


cdef void gen_reuse(Gen* g, uint32_t day, uint32_t n_terminals) noexcept nogil:
    """Empty a dropped date's memory for ``day``: the index and the per-terminal figures
    cleared (a page is initialised when it is opened)."""
    memset(g.index, 0, g.icap * sizeof(uint32_t))
    memset(g.term, 0, max(n_terminals, 1) * sizeof(TermDay))
    g.n_pages = g.n_listed = g.rows = 0
    g.day = day


cdef Page* gen_page(Gen* g, uint32_t terminal, uint32_t base) noexcept nogil:
    """The page of (terminal, base), or NULL."""
    cdef uint64_t h = home(terminal, base, g.icap)
    cdef Page* p
    while g.index[h] != 0:
        p = &g.pages[g.index[h] - 1]
        if p.base == base and p.terminal == terminal:
            return p
        h = (h + 1) & (g.icap - 1)
    return NULL


cdef int gen_room(Gen* g) noexcept nogil:
    """Room for one more page: afterwards a filing cannot fail. -1 when out of memory."""
    cdef Page* grown
    cdef uint32_t* index
    cdef uint32_t* listed
    cdef uint64_t icap, i, h, cap
    if g.n_pages == g.cap:
        # By half: a day's pages are the bulk of the memory, and doubling would leave up to
        # half of it unused (the next date starts at this one's size anyway).
        cap = g.cap + g.cap // 2
        listed = <uint32_t*>realloc(g.listed, cap * sizeof(uint32_t))
        if listed == NULL:
            return -1
        g.listed = listed
        grown = <Page*>big_grow(g.pages, g.cap * sizeof(Page), cap * sizeof(Page))
        if grown == NULL:
            return -1
        g.pages = grown
        g.cap = cap
    if (g.n_pages + 1) * 2 > g.icap:
        icap = g.icap * 2
        index = <uint32_t*>big_alloc(icap * sizeof(uint32_t))
        if index == NULL:
            return -1
        for i in range(g.n_pages):
            h = home(g.pages[i].terminal, g.pages[i].base, icap)
            while index[h] != 0:
                h = (h + 1) & (icap - 1)
            index[h] = <uint32_t>(i + 1)
        big_free(g.index, g.icap * sizeof(uint32_t))
        g.index = index
        g.icap = icap
    return 0


cdef inline void page_changed(Gen* g, Page* p, uint16_t bit) noexcept nogil:
    """Slot ``bit`` of ``p`` is (or may be) written: the next checkpoint holds it again."""
    p.saved &= ~bit
    p.exported &= ~bit
    if not p.listed:
        p.listed = 1
        g.listed[g.n_listed] = <uint32_t>(p - g.pages)
        g.n_listed += 1


cdef Page* gen_open_page(Gen* g, uint32_t terminal, uint32_t base, bint known_new) noexcept nogil:
    """The page of (terminal, base), opened if there is none (room made by gen_room);
    ``known_new``: there is none, so the index is walked only to a free slot."""
    cdef uint64_t h = home(terminal, base, g.icap)
    cdef Page* p
    while g.index[h] != 0:
        p = &g.pages[g.index[h] - 1]
        if not known_new and p.base == base and p.terminal == terminal:
            return p
        h = (h + 1) & (g.icap - 1)
    p = &g.pages[g.n_pages]
    p.terminal = terminal
    p.base = base
    p.valid = p.saved = p.exported = 0
    p.listed = 0
    g.n_pages += 1
    g.index[h] = <uint32_t>g.n_pages
    return p


cdef inline int gen_file(Gen* g, uint32_t terminal, uint32_t seq, const uint64_t* entry,
                         uint32_t n_terminals) noexcept nogil:
    """File a request (room made by gen_room): 1 when new, 0 when it replaced the request
    of the same number (the newer wins)."""
    cdef uint32_t base = seq >> PAGE_SHIFT
    cdef uint16_t bit = <uint16_t>(1 << (seq & (PAGE_SLOTS - 1)))
    cdef TermDay* td = NULL
    cdef Page* p = NULL
    cdef int fresh
    if terminal < n_terminals:
        td = &g.term[terminal]
        if td.cur and g.pages[td.cur - 1].base == base:
            p = &g.pages[td.cur - 1]
    if p == NULL:
        # Above every page of its terminal here: none to find, only a free index slot.
        p = gen_open_page(g, terminal, base, td != NULL and td.hi != 0
                          and base > (td.hi >> PAGE_SHIFT))
        if td != NULL:
            td.cur = <uint32_t>(p - g.pages) + 1
    memcpy(&p.entry[(seq & (PAGE_SLOTS - 1)) * FILED_ENTRY_WORDS], entry, ENTRY_BYTES)
    fresh = (p.valid & bit) == 0
    p.valid |= bit
    page_changed(g, p, bit)
    if td != NULL:
        if seq > td.hi:
            td.hi = seq
        td.last = seq + 1
    g.rows += fresh
    return fresh


cdef inline void memmove_gens(Gen* gens, uint32_t n) noexcept nogil:
    """Make gens[0] free: every generation one place older."""
    cdef int i
    for i in range(<int>n, 0, -1):
        gens[i] = gens[i - 1]


cdef uint64_t gen_export(Gen* g, bint since_confirmed, Filed* out) noexcept nogil:
    """How many rows a segment takes from this date, written to ``out`` if given: every
    row, or ``since_confirmed`` those of its listed pages no written checkpoint holds."""
    cdef uint64_t i, n = 0
    cdef uint64_t pages = g.n_listed if since_confirmed else g.n_pages
    cdef Page* p
    cdef uint16_t take
    cdef uint32_t s
    for i in range(pages):
        p = &g.pages[g.listed[i]] if since_confirmed else &g.pages[i]
        take = p.valid & ~p.saved if since_confirmed else p.valid
        if out == NULL:
            n += popcount16(take)
            continue
        for s in range(PAGE_SLOTS):
            if take & (1 << s):
                memcpy(out[n].entry, &p.entry[s * FILED_ENTRY_WORDS], ENTRY_BYTES)
                out[n].terminal = p.terminal
                out[n].seq = (p.base << PAGE_SHIFT) | s
                n += 1
    return n


cdef void gen_mark_exported(Gen* g) noexcept nogil:
    """A checkpoint taken holds every row of the listed pages (the others are saved)."""
    cdef uint64_t i
    cdef Page* p
    for i in range(g.n_listed):
        p = &g.pages[g.listed[i]]
        p.exported = p.valid


cdef void gen_confirm(Gen* g) noexcept nogil:
    """The checkpoint taken last is written: what it held is saved; pages wholly saved leave
    the list."""
    cdef uint64_t i, kept = 0
    cdef Page* p
    for i in range(g.n_listed):
        p = &g.pages[g.listed[i]]
        p.saved = p.exported
        if p.saved == p.valid:
            p.listed = 0
        else:
            g.listed[kept] = g.listed[i]
            kept += 1
    g.n_listed = kept


cdef class Horizon:
    def __cinit__(self, uint32_t days=2, uint64_t rows_max=1 << 26, uint32_t n_terminals=0,
                  int cutover_s=23 * 3600):
        if not 1 <= days < HORIZON_GENS_MAX:
            raise ValueError(f"idempotency days must be 1..{HORIZON_GENS_MAX - 1}")
        if rows_max >= 0xffffffff:
            raise ValueError("idempotency rows at most 2^32 - 2")
        self.days = days
        self.rows_max = rows_max
        self.pages_max = rows_max // 8 + <uint64_t>max(n_terminals, 1) * (days + 1)
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
        """The newest filed entry of (terminal, seq), or NULL. The caller may change it: the
        next checkpoint holds it again."""
        cdef uint32_t g
        cdef uint32_t base = seq >> PAGE_SHIFT
        cdef uint16_t bit = <uint16_t>(1 << (seq & (PAGE_SLOTS - 1)))
        cdef Gen* gen
        cdef TermDay* td
        cdef Page* p
        for g in range(self.n_gens):
            gen = &self.gens[g]
            p = NULL
            if terminal < self.n_terminals:
                td = &gen.term[terminal]
                if seq > td.hi:
                    continue
                if td.cur and gen.pages[td.cur - 1].base == base:
                    p = &gen.pages[td.cur - 1]
            if p == NULL:
                p = gen_page(gen, terminal, base)
            if p != NULL and p.valid & bit:
                page_changed(gen, p, bit)
                return &p.entry[(seq & (PAGE_SLOTS - 1)) * FILED_ENTRY_WORDS]
        return NULL

    cdef void drop_oldest(self, Gen* keep) noexcept nogil:
        """Forget the oldest settlement date, remembering each terminal's newest seq in it;
        its memory is freed, or handed to ``keep``."""
        cdef Gen* g = &self.gens[self.n_gens - 1]
        cdef uint32_t t
        for t in range(self.n_terminals):
            if g.term[t].last:
                self.dropped[t] = g.term[t].last
        self.rows -= g.rows
        if keep == NULL:
            gen_free(g)
        else:
            keep[0] = g[0]
            memset(g, 0, sizeof(Gen))
        self.n_gens -= 1

    cdef int reserve(self, uint32_t day) noexcept nogil:
        """Room to file one request on settlement date ``day`` (a later date than the newest
        opens its generation and drops those past the horizon; an earlier one is filed with
        the newest, kept longer). -1, nothing changed, when full or out of memory."""
        cdef Gen fresh
        cdef uint64_t cap, pages = 0
        cdef uint32_t g
        if self.rows >= self.rows_max:
            return -1
        for g in range(self.n_gens):
            pages += self.gens[g].n_pages
        if pages >= self.pages_max:
            return -1
        if self.n_gens == 0 or day > self.gens[0].day:
            # A date is like the one before it: size the new one so it rarely grows.
            cap = (self.gens[0].n_pages if self.n_gens and self.gens[0].n_pages > PAGES_FIRST
                   else PAGES_FIRST)
            if self.n_gens and (self.gens[self.n_gens - 1].day + self.days <= day
                                or self.n_gens == HORIZON_GENS_MAX):
                # A steady day: the new date takes the memory of the one it drops, already
                # faulted in (fresh memory costs a page fault per 4 KiB or 2 MiB).
                self.drop_oldest(&fresh)
                gen_reuse(&fresh, day, self.n_terminals)
            elif gen_init(&fresh, day, cap, self.n_terminals) != 0:
                return -1
            while self.n_gens and (self.gens[self.n_gens - 1].day + self.days <= day
                                   or self.n_gens == HORIZON_GENS_MAX):
                self.drop_oldest(NULL)
            memmove_gens(self.gens, self.n_gens)
            self.gens[0] = fresh
            self.n_gens += 1
        return gen_room(&self.gens[0])

    cdef void file(self, uint32_t terminal, uint32_t seq, const uint64_t* entry) noexcept nogil:
        """Keep a request the ring is about to forget (room reserved by ``reserve``)."""
        self.rows += gen_file(&self.gens[0], terminal, seq, entry, self.n_terminals)

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

    # ---- Python API: checkpoints, figures, tests -------------------------------------------

    def export(self, bint since_confirmed=False, reuse=None) -> dict:
        """The horizon as a checkpoint's arrays: its segment ``horizon_rows`` with the
        (day, rows) runs they belong to (``horizon_rows_at``), each date's (day, rows) held
        (``horizon_gens``, oldest first), the per-terminal numbers dropped, and the
        ``horizon_mark`` to ``confirm`` once the checkpoint is written. The segment holds
        every row, or ``since_confirmed`` only the rows filed or changed since the
        checkpoint last confirmed, whose segments it then needs (switch/store/snapshots.py).
        ``reuse``: a segment an earlier export returned that nobody reads any more; its
        memory takes this one if it is large enough (fresh memory costs its page faults:
        2% of the switch's time at 300k requests a second)."""
        cdef int g
        cdef uint64_t n_rows = 0, count
        cdef unsigned char[::1] out
        cdef Filed* at = NULL
        runs = []
        gens = np.zeros((self.n_gens, 2), dtype=np.uint64)
        for g in range(<int>self.n_gens - 1, -1, -1):
            gens[self.n_gens - 1 - g] = (self.gens[g].day, self.gens[g].rows)
            count = gen_export(&self.gens[g], since_confirmed, NULL)
            if count:
                runs.append((self.gens[g].day, count))
            n_rows += count
        buf = reuse.base if reuse is not None and reuse.base is not None else None
        if buf is None or buf.dtype != FILED_DTYPE or len(buf) < n_rows:
            buf = np.empty(n_rows + n_rows // 2, dtype=FILED_DTYPE)
        out_rows = buf[:n_rows]
        if n_rows:
            out = out_rows.view(np.uint8)
            at = <Filed*>&out[0]
        for g in range(<int>self.n_gens - 1, -1, -1):
            if at != NULL:
                at += gen_export(&self.gens[g], since_confirmed, at)
            gen_mark_exported(&self.gens[g])
        self.exports += 1
        dropped = np.zeros(self.n_terminals, dtype=np.uint64)
        if self.n_terminals:
            dropped[:] = <uint64_t[:self.n_terminals]>self.dropped
        return {"horizon_rows": out_rows,
                "horizon_rows_at": np.array(runs, dtype=np.uint64).reshape(-1, 2),
                "horizon_gens": gens, "horizon_dropped": dropped,
                "horizon_mark": np.array([self.exports, not since_confirmed], dtype=np.uint64)}

    def confirm(self, mark) -> bool:
        """The checkpoint of the export that gave ``mark`` is written: what it holds needs
        no later segment. Only the newest export is confirmed (an older one's rows are in
        the newer one too); False, nothing changed, for another."""
        cdef uint32_t g
        if int(mark[0]) != self.exports:
            return False
        for g in range(self.n_gens):
            gen_confirm(&self.gens[g])
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
            if self.open_gen(day, max(count // PAGE_SLOTS, PAGES_FIRST)) != 0:
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
                    self.rows += gen_file(&self.gens[g], f.terminal, f.seq, f.entry,
                                          self.n_terminals)
                at += count
            if at != len(rows):
                raise ValueError("horizon segment: its runs do not add up to its rows")
        for g in range(self.n_gens):
            if self.gens[g].rows != want[self.n_gens - 1 - g, 1]:
                raise ValueError(f"horizon date {self.gens[g].day}: {self.gens[g].rows} rows in "
                                 f"its segments, the checkpoint says "
                                 f"{want[self.n_gens - 1 - g, 1]}")
            gen_mark_exported(&self.gens[g])
            gen_confirm(&self.gens[g])
        for i in range(min(len(dropped), self.n_terminals)):
            self.dropped[i] = int(dropped[i])

    def stats(self) -> dict:
        """Rows held, bytes held (pages, indexes, per-terminal figures), pages and the dates
        held."""
        cdef uint64_t nbytes = 0
        cdef uint32_t g
        for g in range(self.n_gens):
            nbytes += (self.gens[g].cap * (sizeof(Page) + sizeof(uint32_t))
                       + self.gens[g].icap * sizeof(uint32_t)
                       + max(self.n_terminals, 1) * sizeof(TermDay))
        return {"rows": int(self.rows), "bytes": int(nbytes), "rows_max": int(self.rows_max),
                "pages": int(sum(self.gens[g].n_pages for g in range(self.n_gens))),
                "pages_max": int(self.pages_max),
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
