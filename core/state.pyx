# cython: language_level=3
"""The switch's state: numpy structured arrays owned by :class:`State`, read and written by the
authoriser as C structs, with compiled open-addressing indexes from card number and terminal id.

Memory per card is the card record (24 bytes), its account record (32 bytes, one per holder)
and 4-byte index slots at a load factor of at most 0.75: :meth:`State.memory_report` gives the
figure for the loaded data.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

import numpy as np

from onecard.core.crypto cimport mackey_clear, mackey_set, wrap_key
from onecard.core.journal cimport JREC_BYTES, NONE32, JRec


def _dtype(fields: list[tuple[str, str]], itemsize: int) -> np.dtype:
    dt = np.dtype(fields, align=True)
    assert dt.itemsize == itemsize, (fields, dt.itemsize)
    return dt


CARD_DTYPE = _dtype([("pan", "<u8"), ("account", "<u4"), ("trip_time_s", "<u4"),
                     ("region", "<u2"), ("expiry_yymm", "<u2"), ("trip_station", "<u2"),
                     ("status", "u1"), ("functions", "u1")], sizeof(Card))
ACCOUNT_DTYPE = _dtype([("balance_fen", "<i8"), ("medical_fen", "<i4"),
                        ("daily_spent_fen", "<i4"), ("daily_day", "<u2"), ("birth_day", "<u2"),
                        ("surname", "<u2"), ("region", "<u2"), ("name_len", "u1"),
                        ("flags", "u1"), ("spare", "u1", (6,))], sizeof(Account))
TERMINAL_DTYPE = _dtype([("tid", "<u8"), ("region", "<u4"), ("operator", "<u4"),
                         ("permitted", "<u4"), ("spare", "<u4"), ("kind", "u1"),
                         ("protocol", "u1"), ("mac_alg", "u1"), ("signed_on", "u1"),
                         ("pad", "u1", (4,)), ("tmk", "u1", (16,)), ("mak", "u1", (16,)),
                         ("merchant", "S16")], sizeof(Terminal))
RING_DTYPE = _dtype([("amount_fen", "<i8"), ("balance_fen", "<i8"), ("record_no", "<u8"),
                     ("seq", "<u4"), ("card", "<u4"), ("kind", "u1"), ("flags", "u1"),
                     ("rc", "u1"), ("aux", "u1"), ("extra", "<u4")], sizeof(RingEntry))
REGION_DTYPE = _dtype([("code", "<u4"), ("province", "u1"), ("group", "u1"),
                       ("elderly_age", "u1"), ("elderly_pct", "u1"), ("disabled_pct", "u1"),
                       ("pad", "u1", (3,))], sizeof(Region))
OPERATOR_DTYPE = _dtype([("kind", "u1"), ("pad", "u1"), ("region", "<u2"),
                         ("first_station", "<u4"), ("n_stations", "<u4"), ("fare_off", "<u4"),
                         ("flat_fare_fen", "<i4"), ("max_fare_fen", "<i4")], sizeof(Operator))
STATION_DTYPE = _dtype([("id", "<u4"), ("operator", "<u4"), ("local", "<u4")], sizeof(Station))
SURNAME_BYTES = 8
# probe() compares the leading uint64 of a record with the key.
assert CARD_DTYPE.fields["pan"][1] == 0 and TERMINAL_DTYPE.fields["tid"][1] == 0

# Python callers (switch, tests) use the enum members as plain module constants.
for _enum in (Kind, Proto, TerminalKind, CardStatus, Function, HolderFlag, App, OperatorKind,
              RingFlag):
    for _name, _member in _enum.__members__.items():
        globals()[_name] = int(_member)
globals()["MAX_PROVINCES"] = <int>MAX_PROVINCES


cdef uint64_t MIX1 = 0xbf58476d1ce4e5b9
cdef uint64_t MIX2 = 0x94d049bb133111eb


cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    # splitmix64 finaliser: card numbers share long prefixes, so the low bits need mixing.
    x ^= x >> 30
    x *= MIX1
    x ^= x >> 27
    x *= MIX2
    x ^= x >> 31
    return x


cdef extern from *:
    """
    /* Lemire's multiply-shift: maps a hash onto [0, n) for any n, so the index can be sized
       to the load factor instead of the next power of two (4 bytes a slot matter at 10^8). */
    static inline uint64_t onecard_fastrange(uint64_t h, uint64_t n) {
        return (uint64_t)(((unsigned __int128)h * n) >> 64);
    }
    """
    uint64_t fastrange "onecard_fastrange" (uint64_t h, uint64_t n) nogil


cdef extern from *:
    void prefetch_read "__builtin_prefetch" (const void* addr) nogil


cdef inline uint64_t home(uint64_t key, uint64_t cap) noexcept nogil:
    return fastrange(mix64(key), cap)


cdef inline int64_t probe(const uint32_t* slots, uint64_t cap, const uint8_t* records,
                          size_t stride, uint64_t key) noexcept nogil:
    """Position of the record whose leading uint64 is key, or -1 (linear probing)."""
    cdef uint64_t h = home(key, cap)
    cdef uint32_t s
    while True:
        s = slots[h]
        if s == 0:
            return -1
        if (<const uint64_t*>(records + <size_t>(s - 1) * stride))[0] == key:
            return s - 1
        h += 1
        if h == cap:
            h = 0


def pack_tid(tid: str) -> int:
    """An 8-character terminal id as the integer the core indexes it by."""
    raw = tid.encode("ascii")
    if len(raw) != 8:
        raise ValueError(f"terminal id must be 8 ASCII characters, got {tid!r}")
    return int.from_bytes(raw, "big")


def unpack_tid(value: int) -> str:
    return int(value).to_bytes(8, "big").decode("ascii")


MAX_LOAD = 0.75


def _capacity(n: int) -> int:
    """Slots for n keys at a load factor of MAX_LOAD (linear probing stays short)."""
    return max(16, int(n / MAX_LOAD) + 1)


cdef _build_index(const uint64_t* keys, size_t stride_words, uint32_t n, str what):
    """Open-addressing index: slot = position + 1, 0 = empty, linear probing."""
    cdef uint64_t cap = _capacity(n)
    slots = np.zeros(cap, dtype=np.uint32)
    advise_huge_pages(slots)
    cdef uint32_t[::1] s = slots
    cdef uint32_t i
    cdef uint64_t h, key
    cdef int64_t dup = -1
    with nogil:
        for i in range(n):
            key = keys[<size_t>i * stride_words]
            h = home(key, cap)
            while s[h] != 0:
                if keys[<size_t>(s[h] - 1) * stride_words] == key:
                    dup = i
                    break
                h += 1
                if h == cap:
                    h = 0
            if dup >= 0:
                break
            s[h] = i + 1
    if dup >= 0:
        raise ValueError(f"duplicate {what} at position {dup}")
    return slots


def _array(value, dtype, name: str):
    arr = np.ascontiguousarray(value)
    if arr.dtype != dtype:
        raise TypeError(f"{name}: dtype {arr.dtype} is not {dtype}")
    if not arr.flags.writeable:
        arr = arr.copy()
    advise_huge_pages(arr)
    return arr


cdef extern from "<sys/mman.h>" nogil:
    int madvise(void* addr, size_t length, int advice)
    int MADV_HUGEPAGE

HUGE_PAGE = 2 << 20


def advise_huge_pages(arr) -> None:
    """Ask for transparent huge pages under a large array: a card lookup touches three random
    places in gigabytes, and with 4 KiB pages each would also miss the TLB. Advisory: where
    the kernel has THP off, nothing changes."""
    cdef size_t start, end
    if arr.nbytes < 4 * HUGE_PAGE:
        return
    start = (<size_t>arr.ctypes.data + HUGE_PAGE - 1) & ~(<size_t>HUGE_PAGE - 1)
    end = (<size_t>arr.ctypes.data + arr.nbytes) & ~(<size_t>HUGE_PAGE - 1)
    if end > start:
        madvise(<void*>start, end - start, MADV_HUGEPAGE)


cdef class State:
    """All authorisation state. Arrays are owned here; the core reads them through pointers."""

    def __init__(self, *, cards, accounts, terminals, regions, operators, stations, fares,
                 accept, surnames, ring=None, uint32_t ring_size=64):
        if ring_size < 8 or ring_size & (ring_size - 1):
            raise ValueError("ring_size must be a power of two >= 8")
        self.cards = _array(cards, CARD_DTYPE, "cards")
        self.accounts = _array(accounts, ACCOUNT_DTYPE, "accounts")
        self.terminals = _array(terminals, TERMINAL_DTYPE, "terminals")
        self.regions = _array(regions, REGION_DTYPE, "regions")
        self.operators = _array(operators, OPERATOR_DTYPE, "operators")
        self.stations = _array(stations, STATION_DTYPE, "stations")
        self.fares = _array(fares, np.dtype("<i4"), "fares")
        self.accept = _array(accept, np.dtype("<u8"), "accept")
        self.surnames = _array(surnames, np.dtype("u1"), "surnames")
        if self.accept.shape != (N_APPS, MAX_PROVINCES):
            raise ValueError(f"accept must have shape ({N_APPS}, {MAX_PROVINCES})")
        if self.surnames.ndim != 2 or self.surnames.shape[1] != SURNAME_BYTES:
            raise ValueError(f"surnames must have shape (n, {SURNAME_BYTES})")
        self.n_cards = len(self.cards)
        self.n_accounts = len(self.accounts)
        self.n_terminals = len(self.terminals)
        self.n_stations = len(self.stations)
        self.n_regions = len(self.regions)
        self.n_surnames = len(self.surnames)
        self.ring_size = ring_size
        self.ring_mask = ring_size - 1
        if ring is None:
            ring = np.zeros(self.n_terminals * ring_size, dtype=RING_DTYPE)
        self.ring = _array(ring, RING_DTYPE, "ring")
        if len(self.ring) != self.n_terminals * ring_size:
            raise ValueError("ring does not match terminals x ring_size")
        self._check_references()
        self._bind()
        self.card_slots = _build_index(<uint64_t*>self.card, sizeof(Card) // 8, self.n_cards,
                                       "card number")
        self.terminal_slots = _build_index(<uint64_t*>self.term, sizeof(Terminal) // 8,
                                           self.n_terminals, "terminal id")
        self._bind()
        self.mac_keys = <MacKey*>calloc(max(self.n_terminals, 1), sizeof(MacKey))
        if self.mac_keys == NULL:
            raise MemoryError()
        for t in range(self.n_terminals):
            if self.term[t].signed_on:
                self._install_key(t)

    def __dealloc__(self):
        if self.mac_keys != NULL:
            for t in range(self.n_terminals):
                mackey_clear(&self.mac_keys[t])
            free(self.mac_keys)

    def _check_references(self) -> None:
        """Every index stored in an array must point inside its target (TIGER_STYLE: the core
        trusts these without bounds checks)."""
        def bad(name, values, limit):
            if len(values) and int(values.max()) >= limit:
                raise ValueError(f"{name} refers past the end ({int(values.max())} >= {limit})")
        bad("cards.account", self.cards["account"], self.n_accounts)
        bad("cards.region", self.cards["region"], self.n_regions)
        bad("cards.trip_station", self.cards["trip_station"], self.n_stations + 1)
        bad("accounts.region", self.accounts["region"], self.n_regions)
        bad("accounts.surname", self.accounts["surname"], max(self.n_surnames, 1))
        bad("terminals.region", self.terminals["region"], self.n_regions)
        bad("regions.province", self.regions["province"], MAX_PROVINCES)
        bad("stations.operator", self.stations["operator"], len(self.operators))
        if len(self.stations) > 1 and np.any(np.diff(self.stations["id"].astype(np.int64)) <= 0):
            raise ValueError("stations must be sorted by id, ids unique")
        for o in self.operators:
            end = int(o["fare_off"]) + int(o["n_stations"]) ** 2
            if end > len(self.fares):
                raise ValueError("operator fare matrix runs past fares")

    cdef _bind(self):
        self.card = <Card*><size_t>self.cards.ctypes.data
        self.acct = <Account*><size_t>self.accounts.ctypes.data
        self.term = <Terminal*><size_t>self.terminals.ctypes.data
        self.rng = <RingEntry*><size_t>self.ring.ctypes.data
        self.region = <Region*><size_t>self.regions.ctypes.data
        self.op = <Operator*><size_t>self.operators.ctypes.data
        self.stn = <Station*><size_t>self.stations.ctypes.data
        self.fare = <int32_t*><size_t>self.fares.ctypes.data
        self.accept_mask = <uint64_t*><size_t>self.accept.ctypes.data
        self.surname = <uint8_t*><size_t>self.surnames.ctypes.data
        if self.card_slots is not None:
            self.cslot = <uint32_t*><size_t>self.card_slots.ctypes.data
            self.ccap = len(self.card_slots)
            self.tslot = <uint32_t*><size_t>self.terminal_slots.ctypes.data
            self.tcap = len(self.terminal_slots)

    cdef _install_key(self, uint32_t t):
        if mackey_set(&self.mac_keys[t], self.term[t].mac_alg, self.term[t].mak) != 0:
            raise ValueError(f"terminal {t}: MAC algorithm {self.term[t].mac_alg} not available")

    # ---- lookups (hot path) ------------------------------------------------------------------

    cdef int64_t find_card(self, uint64_t pan) noexcept nogil:
        return probe(self.cslot, self.ccap, <const uint8_t*>self.card, sizeof(Card), pan)

    cdef void prefetch(self, uint64_t pan, int stage) noexcept nogil:
        """Start loading what looking up ``pan`` will touch, one step further per stage:
        0 its index slot, 1 its card record, 2 its account. Run over a batch a few messages
        ahead of the authoriser, the cache misses of many cards overlap instead of queueing
        (at 10^8 cards each is a trip to DRAM)."""
        cdef uint64_t h = home(pan, self.ccap)
        cdef uint32_t s
        if stage == 0:
            prefetch_read(&self.cslot[h])
            return
        s = self.cslot[h]
        if s == 0:
            return
        if stage == 1:
            prefetch_read(&self.card[s - 1])
        elif self.card[s - 1].pan == pan:
            prefetch_read(&self.acct[self.card[s - 1].account])

    cdef int64_t find_terminal(self, uint64_t tid) noexcept nogil:
        return probe(self.tslot, self.tcap, <const uint8_t*>self.term, sizeof(Terminal), tid)

    cdef int64_t find_station(self, uint32_t station_id) noexcept nogil:
        cdef int64_t lo = 0, hi = <int64_t>self.n_stations - 1, mid
        while lo <= hi:
            mid = (lo + hi) >> 1
            if self.stn[mid].id == station_id:
                return mid
            if self.stn[mid].id < station_id:
                lo = mid + 1
            else:
                hi = mid - 1
        return -1

    cdef RingEntry* slot(self, uint32_t terminal, uint32_t seq) noexcept nogil:
        return &self.rng[<size_t>terminal * self.ring_size + (seq & self.ring_mask)]

    # ---- applying records (live and replay) --------------------------------------------------

    cdef int apply(self, JRec* r, uint64_t record_no) noexcept nogil:
        """Apply one record's after-images. The live authoriser and recovery both come here,
        which is what makes a replayed journal give exactly the live state."""
        cdef Account* a
        cdef Card* c
        cdef RingEntry* e
        cdef Terminal* t
        cdef uint8_t enc[16]
        cdef uint8_t key[16]
        if r.terminal >= self.n_terminals:
            return -1
        if r.kind == KIND_SIGNON:
            t = &self.term[r.terminal]
            memcpy(enc, &r.a, 8)
            memcpy(enc + 8, &r.b, 8)
            if wrap_key(t.mac_alg, t.tmk, enc, key, 1) != 0:
                return -1
            memcpy(t.mak, key, 16)
            t.signed_on = 1
            return mackey_set(&self.mac_keys[r.terminal], t.mac_alg, key)
        if r.rc == 0 and r.account != NONE32:
            if r.account >= self.n_accounts:
                return -1
            a = &self.acct[r.account]
            if r.kind == KIND_PURCHASE or r.kind == KIND_REVERSAL or r.kind == KIND_TAP:
                a.balance_fen = r.balance_fen
            if r.kind == KIND_PURCHASE or r.kind == KIND_REVERSAL:
                a.daily_day = <uint16_t>(r.a >> 32)
                a.daily_spent_fen = <int32_t><uint32_t>r.a
        if r.rc == 0 and r.kind == KIND_TAP and r.card != NONE32:
            if r.card >= self.n_cards:
                return -1
            c = &self.card[r.card]
            c.trip_station = <uint16_t>(r.a >> 32)
            c.trip_time_s = <uint32_t>r.a
        e = self.slot(r.terminal, r.seq)
        e.seq = r.seq
        e.card = r.card
        e.record_no = record_no
        e.rc = r.rc
        e.flags = r.flags
        e.balance_fen = r.balance_fen
        e.aux = 0
        e.extra = 0
        if r.kind == KIND_REVERSAL:
            e.kind = KIND_PURCHASE           # the slot keeps describing the original
            e.amount_fen = <int64_t>r.b
        else:
            e.kind = r.kind
            e.amount_fen = r.amount_fen
        if r.kind == KIND_TAP:
            e.aux = <uint8_t>(r.b & 0xff)
            e.extra = <uint32_t>(r.b >> 8)
        elif r.kind == KIND_VERIFY:
            e.aux = <uint8_t>r.c
        return 0

    # ---- Python API (recovery, admin, tests) -------------------------------------------------

    def apply_records(self, data, uint64_t first_no, uint64_t skip_before=0) -> int:
        """Replay packed journal records numbered from first_no; records numbered below
        skip_before are already in the snapshot. Returns how many were applied."""
        cdef const uint8_t[::1] view = data
        cdef size_t n = len(data) // JREC_BYTES, i
        cdef size_t applied = 0
        cdef JRec* recs
        if len(data) % JREC_BYTES:
            raise ValueError("journal blob is not a whole number of records")
        if n == 0:
            return 0
        recs = <JRec*>&view[0]
        for i in range(n):
            if first_no + i < skip_before:
                continue
            if self.apply(&recs[i], first_no + i) != 0:
                raise ValueError(f"journal record {first_no + i} does not fit this state")
            applied += 1
        return applied

    def card_index(self, pan: int) -> int:
        """Position of a card number, or -1."""
        return self.find_card(pan)

    def count_known(self, pans) -> int:
        """How many of ``pans`` (uint64 array) are known cards: the index lookup in bulk, for
        benchmarks and data checks."""
        cdef const uint64_t[::1] view = np.ascontiguousarray(pans, dtype=np.uint64)
        cdef size_t i, found = 0
        with nogil:
            for i in range(view.shape[0]):
                if self.find_card(view[i]) >= 0:
                    found += 1
        return found

    def terminal_index(self, tid: str) -> int:
        return self.find_terminal(pack_tid(tid))

    def snapshot(self) -> dict:
        """Copies of the mutable arrays, for a checkpoint."""
        return {"cards": self.cards.copy(), "accounts": self.accounts.copy(),
                "terminals": self.terminals.copy(), "ring": self.ring.copy()}

    def memory_report(self) -> dict:
        """Bytes held for cards: records, accounts and the card index, and per card."""
        card_bytes = self.cards.nbytes + self.accounts.nbytes + self.card_slots.nbytes
        return {
            "cards": int(self.n_cards),
            "accounts": int(self.n_accounts),
            "card_bytes": int(self.cards.nbytes),
            "account_bytes": int(self.accounts.nbytes),
            "index_bytes": int(self.card_slots.nbytes),
            "bytes_per_card": card_bytes / max(self.n_cards, 1),
            "terminal_bytes": int(self.terminals.nbytes + self.ring.nbytes
                                  + self.n_terminals * sizeof(MacKey)),
        }
