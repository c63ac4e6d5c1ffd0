# cython: language_level=3
"""The switch's state: numpy structured arrays owned by :class:`State`, read and written by the
authoriser as C structs, with compiled open-addressing indexes from card number and terminal id.

Memory per card is the card record (24 bytes), its account record (32 bytes, one per holder)
and 4-byte index slots at a load factor of at most 0.75: :meth:`State.memory_report` gives the
figure for the loaded data. Holder names and identity numbers are not held: they stay sealed
on disk and are opened a block at a time when read (core/holders.pyx). Cards can be added
while running (replacement and electronic cards): they live in a buffer with spare room, and
the index is rebuilt larger when full.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset

import numpy as np

from onecard.core.crypto cimport mackey_clear, mackey_set
from onecard.core.holders cimport HOLDER_BYTES, HOLDER_NAME_BYTES
from onecard.core.horizon cimport FILED_ENTRY_WORDS, Horizon
from onecard.core.maps cimport Entry, U64Map


def _dtype(fields: list, itemsize: int) -> np.dtype:
    dt = np.dtype(fields, align=True)
    assert dt.itemsize == itemsize, (fields, dt.itemsize, itemsize)
    return dt


CARD_DTYPE = _dtype([("pan", "<u8"), ("account", "<u4"), ("trip_time_s", "<u4"),
                     ("region", "<u2"), ("expiry_yymm", "<u2"), ("trip_station", "<u2"),
                     ("status", "u1"), ("functions", "u1")], sizeof(Card))
ACCOUNT_DTYPE = _dtype([("balance_fen", "<i8"), ("medical_fen", "<i4"),
                        ("daily_spent_fen", "<i4"), ("daily_day", "<u2"), ("birth_day", "<u2"),
                        ("surname", "<u2"), ("region", "<u2"), ("name_len", "u1"),
                        ("flags", "u1"), ("last_ride_region", "<u2"), ("last_ride_s", "<u4")],
                       sizeof(Account))
TERMINAL_DTYPE = _dtype([("tid", "<u8"), ("debit_fen", "<i8"), ("credit_fen", "<i8"),
                         ("region", "<u4"), ("operator", "<u4"), ("permitted", "<u4"),
                         ("offline_hw", "<u4"), ("batch_no", "<u4"), ("debit_count", "<u4"),
                         ("credit_count", "<u4"), ("app", "<u2"), ("policy", "<u2"),
                         ("kind", "u1"), ("protocol", "u1"), ("mac_alg", "u1"),
                         ("signed_on", "u1"), ("scope", "u1"), ("upload_open", "u1"),
                         ("session_day", "<u2"),
                         ("tmk", "u1", (16,)), ("mak", "u1", (16,)), ("merchant", "S16")],
                        sizeof(Terminal))
RING_DTYPE = _dtype([("amount_fen", "<i8"), ("balance_fen", "<i8"), ("record_no", "<u8"),
                     ("seq", "<u4"), ("card", "<u4"), ("kind", "u1"), ("flags", "u1"),
                     ("rc", "u1"), ("aux", "u1"), ("extra", "<u4")], sizeof(RingEntry))
assert sizeof(RingEntry) == FILED_ENTRY_WORDS * 8      # the horizon files ring entries whole
REGION_DTYPE = _dtype([("code", "<u4"), ("province", "u1"), ("group", "u1"),
                       ("elderly_age", "u1"), ("elderly_pct", "u1"), ("disabled_pct", "u1"),
                       ("transfer_minutes", "u1"), ("transfer_discount_fen", "<u2"),
                       ("med_deductible_fen", "<i4"), ("med_cap_fen", "<i4"),
                       ("med_ratio_pct", "u1"), ("pad", "u1", (3,))], sizeof(Region))
APP_DTYPE = _dtype([("functions", "u1"), ("active", "u1"), ("pad", "<u2"),
                    ("daily_limit_fen", "<i4")], sizeof(App))
RULE_DTYPE = _dtype([("kind", "u1"), ("param", "u1"), ("pct", "u1"), ("hour_from", "u1"),
                     ("hour_to", "u1"), ("weekdays", "u1"), ("pad", "<u2")], sizeof(Rule))
POLICY_DTYPE = _dtype([("base_fen", "<i4"), ("n_rules", "u1"), ("pad", "u1", (3,)),
                       ("rules", RULE_DTYPE, (RULES_MAX,))], sizeof(Policy))
OPERATOR_DTYPE = _dtype([("kind", "u1"), ("pad", "u1"), ("region", "<u2"),
                         ("first_station", "<u4"), ("n_stations", "<u4"), ("fare_off", "<u4"),
                         ("flat_fare_fen", "<i4"), ("fare_fen_max", "<i4")], sizeof(Operator))
STATION_DTYPE = _dtype([("id", "<u4"), ("operator", "<u4"), ("local", "<u4")], sizeof(Station))
# The compiled maps a checkpoint holds (State.snapshot), by attribute name.
MAPS = ("daily_app", "medical_year", "filings", "standin", "standin_posted", "foreign_deny",
        "foreign_pan")
SURNAME_BYTES = 8
HOLDER_RECORD_BYTES = HOLDER_BYTES
HOLDER_NAME_LEN = HOLDER_NAME_BYTES
APP_COUNT_MAX = APPS_MAX
# probe() compares the leading uint64 of a record with the key.
assert CARD_DTYPE.fields["pan"][1] == 0 and TERMINAL_DTYPE.fields["tid"][1] == 0

# Python callers (switch, tests) use the enum members as plain module constants.
for _enum in (Kind, Proto, TerminalKind, DataScope, CardStatus, Function, HolderFlag,
              OperatorKind, RingFlag, RuleKind, DenyEntry):
    for _name, _member in _enum.__members__.items():
        globals()[_name] = int(_member)
globals()["PROVINCES_MAX"] = <int>PROVINCES_MAX


# The enums that reach a store, a wire, the admin API or the CLI are declared in
# protocols/enums.py; the ones in state.pxd are compile-time copies and must agree.
from onecard.protocols.enums import STATE_TABLES as _TABLES

for _table in _TABLES:
    _compiled = {_name: int(_member) for _name, _member in
                 globals()[_table.core_enum].__members__.items()}
    assert _compiled == _table.symbols(), (_table.core_enum, _compiled, _table.symbols())


cdef extern from *:
    """
    /* Lemire's multiply-shift: maps a hash onto [0, n) for any n, so the index can be sized
       to the load factor instead of the next power of two (4 bytes a slot matter at 10^8). */
    static inline uint64_t onecard_fastrange(uint64_t h, uint64_t n) {
        return (uint64_t)(((unsigned __int128)h * n) >> 64);
    }
    """
    uint64_t fastrange "onecard_fastrange" (uint64_t h, uint64_t n) nogil
    void prefetch_read "__builtin_prefetch" (const void* addr) nogil

cdef extern from "<sys/mman.h>" nogil:
    int madvise(void* addr, size_t length, int advice)
    int MADV_HUGEPAGE


cdef enum:
    PREFETCH_PROBES = 6          # index slots a stage-1 prefetch looks at for its card


cdef inline uint32_t slot_mask(uint64_t cap) noexcept nogil:
    """The low bits of a slot that hold position + 1: enough for any position below cap. The
    bits above hold a tag of the key's hash, so a probe skips most slots of other keys
    without loading their records (at 10^8 cards each such load is a trip to DRAM)."""
    cdef int bits = 1
    while bits < 32 and (<uint64_t>1 << bits) <= cap:
        bits += 1
    return 0xFFFFFFFF if bits >= 32 else <uint32_t>((<uint64_t>1 << bits) - 1)


cdef inline uint32_t slot_tag(uint64_t mixed, uint32_t mask) noexcept nogil:
    # The low hash bits: the home slot comes from the high ones (fastrange).
    return <uint32_t>mixed & ~mask


cdef inline int64_t probe(const uint32_t* slots, uint64_t cap, uint32_t mask,
                          const uint8_t* records, size_t stride, uint64_t key) noexcept nogil:
    """Position of the record whose leading uint64 is key, or -1 (linear probing)."""
    cdef uint64_t mixed = mix64(key)
    cdef uint64_t h = fastrange(mixed, cap)
    cdef uint32_t s, tag = slot_tag(mixed, mask)
    cdef size_t pos
    while True:
        s = slots[h]
        if s == 0:
            return -1
        if (s & ~mask) == tag:
            pos = (s & mask) - 1
            if (<const uint64_t*>(records + pos * stride))[0] == key:
                return <int64_t>pos
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


LOAD_FACTOR_MAX = 0.75


def _capacity(n: int) -> int:
    """Slots for n keys at a load factor of LOAD_FACTOR_MAX (linear probing stays short)."""
    return max(16, int(n / LOAD_FACTOR_MAX) + 1)


cdef inline void slot_insert(uint32_t* slots, uint64_t cap, uint32_t mask, uint64_t key,
                             uint32_t pos) noexcept nogil:
    """Put the record at pos (whose key is not in the index) into the first free slot."""
    cdef uint64_t mixed = mix64(key)
    cdef uint64_t h = fastrange(mixed, cap)
    while slots[h] != 0:
        h += 1
        if h == cap:
            h = 0
    slots[h] = slot_tag(mixed, mask) | (pos + 1)


cdef _build_index(const uint64_t* keys, size_t stride_words, uint32_t n, str what,
                  uint64_t cap=0):
    """Open-addressing index: slot = tag | position + 1 (see slot_mask), 0 = empty, linear
    probing."""
    if cap == 0:
        cap = _capacity(n)
    slots = np.zeros(cap, dtype=np.uint32)
    advise_huge_pages(slots)
    cdef uint32_t[::1] s = slots
    cdef uint32_t i, mask = slot_mask(cap)
    cdef uint64_t key
    cdef int64_t dup = -1
    with nogil:
        for i in range(n):
            key = keys[<size_t>i * stride_words]
            if probe(&s[0], cap, mask, <const uint8_t*>keys, stride_words * 8, key) >= 0:
                dup = i
                break
            slot_insert(&s[0], cap, mask, key, i)
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


def _spare(n: int) -> int:
    return n + max(1024, n // 64)      # room for replacement and electronic cards


cdef class State:
    """All authorisation state. Arrays are owned here; the core reads them through pointers."""

    def __init__(self, *, cards, accounts, terminals, regions, operators, stations, fares,
                 apps, accept, policies, surnames, holders=None, ring=None,
                 uint32_t ring_size=64, maps=None, uint64_t map_entries_max=1 << 26,
                 uint32_t idempotency_days=2, uint64_t idempotency_rows_max=1 << 26,
                 int cutover_s=23 * 3600):
        """``map_entries_max`` bounds each map of state only some accounts have, and
        ``idempotency_rows_max`` the horizon of ``idempotency_days`` dates behind the rings
        (core/horizon.pyx): past either, a request that would add to it is declined 96."""
        if ring_size < 8 or ring_size & (ring_size - 1):
            raise ValueError("ring_size must be a power of two >= 8")
        given = _array(cards, CARD_DTYPE, "cards")
        self.n_cards = len(given)
        if self.n_cards > DENY_INDEX:
            raise ValueError(f"more than {DENY_INDEX} cards")
        self._cards_store = np.zeros(_spare(self.n_cards), dtype=CARD_DTYPE)
        self._cards_store[:self.n_cards] = given
        advise_huge_pages(self._cards_store)
        self.accounts = _array(accounts, ACCOUNT_DTYPE, "accounts")
        self.terminals = _array(terminals, TERMINAL_DTYPE, "terminals")
        self.regions = _array(regions, REGION_DTYPE, "regions")
        self.operators = _array(operators, OPERATOR_DTYPE, "operators")
        self.stations = _array(stations, STATION_DTYPE, "stations")
        self.fares = _array(fares, np.dtype("<i4"), "fares")
        self.surnames = _array(surnames, np.dtype("u1"), "surnames")
        if self.surnames.ndim != 2 or self.surnames.shape[1] != SURNAME_BYTES:
            raise ValueError(f"surnames must have shape (n, {SURNAME_BYTES})")
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
        self.holders = holders
        if holders is not None and self.holders.n_records < self.n_accounts:
            raise ValueError("holders file is shorter than one record per account")
        self.daily_app = U64Map(4096, map_entries_max)
        self.medical_year = U64Map(4096, map_entries_max)
        self.filings = U64Map(1024)
        self.standin = U64Map(1024, map_entries_max)
        self.standin_posted = U64Map(1024, map_entries_max)
        self.foreign_deny = U64Map(1024, map_entries_max)
        self.foreign_pan = U64Map(1024, map_entries_max)
        self.horizon = Horizon(idempotency_days, idempotency_rows_max, self.n_terminals,
                               cutover_s)
        self.set_catalogue(apps, accept, policies)
        self._check_references()
        self._bind()
        self.card_slots = _build_index(<uint64_t*>self.card, sizeof(Card) // 8, self.n_cards,
                                       "card number")
        self.terminal_slots = _build_index(<uint64_t*>self.term, sizeof(Terminal) // 8,
                                           self.n_terminals, "terminal id")
        self._bind()
        self._capacity_cached = len(self._cards_store)
        self.mac_keys = <MacKey*>calloc(max(self.n_terminals, 1), sizeof(MacKey))
        if self.mac_keys == NULL:
            raise MemoryError()
        for t in range(self.n_terminals):
            if self.term[t].signed_on:
                self._install_key(t)
        if maps:
            for name in MAPS:
                if name in maps:
                    getattr(self, name).load(maps[name])

    def __dealloc__(self):
        if self.mac_keys != NULL:
            for t in range(self.n_terminals):
                mackey_clear(&self.mac_keys[t])
            free(self.mac_keys)
        free(self.deny_log)

    @property
    def cards(self):
        return self._cards_store[:self.n_cards]

    def set_catalogue(self, apps, accept, policies) -> None:
        """Install a catalogue version: applications, acceptance masks, price policies. The
        next authorisation uses it (the event loop calls this between batches)."""
        apps = _array(apps, APP_DTYPE, "apps")
        accept = _array(accept, np.dtype("<u8"), "accept")
        policies = _array(policies, POLICY_DTYPE, "policies")
        if len(apps) > APPS_MAX or accept.shape != (APPS_MAX, PROVINCES_MAX):
            raise ValueError(f"at most {APPS_MAX} applications; accept is "
                             f"({APPS_MAX}, {PROVINCES_MAX})")
        if len(policies) == 0:
            raise ValueError("policies[0] must exist (no policy)")
        if self.terminals is not None and len(self.terminals):
            if int(self.terminals["app"].max()) >= len(apps):
                raise ValueError("a terminal refers to an application the catalogue lacks")
            if int(self.terminals["policy"].max()) >= len(policies):
                raise ValueError("a terminal refers to a policy that does not exist")
        self.apps, self.accept, self.policies = apps, accept, policies
        self.n_apps = len(apps)
        self.n_policies = len(policies)
        self.app = <App*><size_t>apps.ctypes.data
        self.accept_mask = <uint64_t*><size_t>accept.ctypes.data
        self.policy = <Policy*><size_t>policies.ctypes.data

    def _check_references(self) -> None:
        """Every index stored in an array must point inside its target (TIGER_STYLE: the core
        trusts these without bounds checks)."""
        def bad(name, values, limit):
            if len(values) and int(values.max()) >= limit:
                raise ValueError(f"{name} refers past the end ({int(values.max())} >= {limit})")
        cards = self.cards
        bad("cards.account", cards["account"], self.n_accounts)
        bad("cards.region", cards["region"], self.n_regions)
        bad("cards.trip_station", cards["trip_station"], self.n_stations + 1)
        bad("accounts.region", self.accounts["region"], self.n_regions)
        bad("accounts.surname", self.accounts["surname"], max(self.n_surnames, 1))
        bad("terminals.region", self.terminals["region"], self.n_regions)
        bad("terminals.app", self.terminals["app"], self.n_apps)
        bad("terminals.policy", self.terminals["policy"], self.n_policies)
        bad("regions.province", self.regions["province"], PROVINCES_MAX)
        bad("stations.operator", self.stations["operator"], len(self.operators))
        if len(self.stations) > 1 and np.any(np.diff(self.stations["id"].astype(np.int64)) <= 0):
            raise ValueError("stations must be sorted by id, ids unique")
        for o in self.operators:
            end = int(o["fare_off"]) + int(o["n_stations"]) ** 2
            if end > len(self.fares):
                raise ValueError("operator fare matrix runs past fares")

    cdef _bind(self):
        self.card = <Card*><size_t>self._cards_store.ctypes.data
        self.acct = <Account*><size_t>self.accounts.ctypes.data
        self.term = <Terminal*><size_t>self.terminals.ctypes.data
        self.rng = <RingEntry*><size_t>self.ring.ctypes.data
        self.region = <Region*><size_t>self.regions.ctypes.data
        self.op = <Operator*><size_t>self.operators.ctypes.data
        self.stn = <Station*><size_t>self.stations.ctypes.data
        self.fare = <int32_t*><size_t>self.fares.ctypes.data
        self.surname = <uint8_t*><size_t>self.surnames.ctypes.data
        if self.card_slots is not None:
            self.cslot = <uint32_t*><size_t>self.card_slots.ctypes.data
            self.ccap = len(self.card_slots)
            self.cmask = slot_mask(self.ccap)
            self.tslot = <uint32_t*><size_t>self.terminal_slots.ctypes.data
            self.tcap = len(self.terminal_slots)
            self.tmask = slot_mask(self.tcap)

    cdef _install_key(self, uint32_t t):
        if mackey_set(&self.mac_keys[t], self.term[t].mac_alg, self.term[t].mak) != 0:
            raise ValueError(f"terminal {t}: MAC algorithm {self.term[t].mac_alg} not available")

    # ---- lookups (hot path) ------------------------------------------------------------------

    cdef int64_t find_card(self, uint64_t pan) noexcept nogil:
        return probe(self.cslot, self.ccap, self.cmask, <const uint8_t*>self.card, sizeof(Card),
                     pan)

    cdef void prefetch(self, uint64_t pan, int stage) noexcept nogil:
        """Start loading what looking up ``pan`` will touch, one step further per stage:
        0 its index slot, 1 its card record, 2 its account. Run over a batch in passes (every
        request's slot, then every card, then every account), the cache misses of many cards
        overlap instead of queueing (at 10^8 cards each is a trip to DRAM)."""
        cdef uint64_t mixed, h
        cdef uint32_t s, tag
        cdef int64_t pos
        cdef int _k
        cdef const uint8_t* rec
        if stage == 2:
            pos = self.find_card(pan)
            if pos >= 0:
                prefetch_read(&self.acct[self.card[pos].account])
            return
        mixed = mix64(pan)
        h = fastrange(mixed, self.ccap)
        if stage == 0:
            prefetch_read(&self.cslot[h])
            return
        if stage == 1:
            # The cards of the first slots whose tag matches (almost always just the card
            # sought): both cache lines of those a 24-byte record straddles.
            tag = slot_tag(mixed, self.cmask)
            for _k in range(PREFETCH_PROBES):
                s = self.cslot[h]
                if s == 0:
                    return
                if (s & ~self.cmask) == tag:
                    rec = <const uint8_t*>&self.card[(s & self.cmask) - 1]
                    prefetch_read(rec)
                    prefetch_read(rec + sizeof(Card) - 1)
                h += 1
                if h == self.ccap:
                    h = 0

    cdef int64_t find_terminal(self, uint64_t tid) noexcept nogil:
        return probe(self.tslot, self.tcap, self.tmask, <const uint8_t*>self.term,
                     sizeof(Terminal), tid)

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

    cdef RingEntry* seen(self, uint32_t terminal, uint32_t seq) noexcept nogil:
        """The newest request of this terminal under ``seq``: the ring's slot when it holds
        it, else the horizon's entry, else the ring's slot (holding another seq, or empty:
        callers compare ``seq``). An entry found in the horizon is changed where it is."""
        cdef RingEntry* e = self.slot(terminal, seq)
        cdef RingEntry* filed
        if holds(e, seq):
            return e
        filed = <RingEntry*>self.horizon.find(terminal, seq)
        return filed if filed != NULL else e

    # ---- growth ------------------------------------------------------------------------------

    cdef int64_t add_card(self, uint64_t pan, uint32_t account) noexcept nogil:
        """Append a card (other fields zero) and index it. -2 when the buffer or the index
        is full (call reserve_cards with the GIL, then again), -3 when the number exists."""
        cdef uint32_t idx = self.n_cards
        if idx >= self._capacity_cached or (idx + 1) * 4 > self.ccap * 3:
            return -2
        if self.find_card(pan) >= 0:
            return -3
        memset(&self.card[idx], 0, sizeof(Card))
        self.card[idx].pan = pan
        self.card[idx].account = account
        slot_insert(self.cslot, self.ccap, self.cmask, pan, idx)
        self.n_cards += 1
        return idx

    def reserve_cards(self, uint32_t extra=1) -> None:
        """Make room for ``extra`` more cards (copying the cards once into a larger buffer
        and rebuilding the index larger when needed)."""
        cdef uint64_t need = self.n_cards + extra
        if need > DENY_INDEX:                # a deny-log entry has 30 bits for the index
            raise MemoryError(f"more than {DENY_INDEX} cards")
        if need > len(self._cards_store):
            bigger = np.zeros(_spare(need), dtype=CARD_DTYPE)
            bigger[:self.n_cards] = self._cards_store[:self.n_cards]
            advise_huge_pages(bigger)
            self._cards_store = bigger
            self._bind()
        if need * 4 > self.ccap * 3:
            # Headroom for 1/16 more cards: rebuilding a 10^8 index takes seconds.
            self.card_slots = _build_index(<uint64_t*>self.card, sizeof(Card) // 8,
                                           self.n_cards, "card number",
                                           _capacity(need + need // 16))
        self._bind()
        self._capacity_cached = len(self._cards_store)

    # ---- deny list ---------------------------------------------------------------------------

    cdef int deny_reserve(self, uint32_t entries) noexcept nogil:
        """Room for ``entries`` more deny-list changes: afterwards that many deny() calls
        cannot fail. -1 when out of memory (or past 2^31 changes)."""
        cdef uint64_t need = <uint64_t>self.deny_version + entries, cap = self.deny_cap
        cdef uint32_t* grown
        if need <= self.deny_cap:
            return 0
        if need > DENY_LOG_MAX:
            return -1
        cap = cap * 2 if cap else 1024
        while cap < need:
            cap *= 2
        cap = min(cap, <uint64_t>DENY_LOG_MAX)
        grown = <uint32_t*>realloc(self.deny_log, cap * sizeof(uint32_t))
        if grown == NULL:
            return -1
        self.deny_log = grown
        self.deny_cap = <uint32_t>cap
        return 0

    cdef int deny(self, uint32_t card, bint removed) noexcept nogil:
        """Append a deny-list change; its version is the new deny_version."""
        if self.deny_reserve(1) != 0:
            return -1
        self.deny_log[self.deny_version] = card | (<uint32_t>removed << 31)
        self.deny_version += 1
        return 0

    cdef uint64_t deny_pan(self, uint32_t entry) noexcept nogil:
        """The card number a deny-log entry names (this region's card or another's)."""
        cdef Entry* e
        if entry & DENY_FOREIGN:
            e = self.foreign_pan.find(entry & DENY_INDEX)
            return <uint64_t>e.a if e != NULL else 0
        return self.card[entry & DENY_INDEX].pan

    def deny_changes(self, uint32_t since=0, until=None, *, bint foreign=True) -> list:
        """[(version, card number, added)] after version ``since`` (up to ``until``); without
        ``foreign``, only this region's cards (what its owner publishes)."""
        out = []
        cdef uint32_t end = self.deny_version if until is None else min(until, self.deny_version)
        for v in range(since, end):
            e = self.deny_log[v]
            if foreign or not e & DENY_FOREIGN:
                out.append((v + 1, int(self.deny_pan(e)), not e & DENY_REMOVED))
        return out

    def foreign_listed(self, uint64_t pan) -> bool:
        """Whether another region's card is on this switch's deny list (FOREIGN_DENY)."""
        cdef Entry* e = self.foreign_deny.find(pan)
        return e != NULL and e.b != 0

    # ---- Python API (recovery, admin, tests) -------------------------------------------------

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

    def holder_of(self, uint32_t account) -> tuple[str, str]:
        """Full name and identity number of an account's holder (its block of the sealed
        holders file opened; HolderRecordError if it does not open)."""
        if self.holders is None or account >= self.n_accounts:
            return "", ""
        raw = self.holders.record_bytes(account)
        return (raw[:HOLDER_NAME_BYTES].rstrip(b"\0").decode(),
                raw[HOLDER_NAME_BYTES:].rstrip(b"\0").decode())

    def snapshot(self, bint horizon_since_confirmed=False, horizon_reuse=None) -> dict:
        """Copies of the mutable state, for a checkpoint; the horizon's segment holds all of
        its rows, or only those since the checkpoint it confirmed last, in the memory of
        ``horizon_reuse`` if it is large enough (Horizon.export)."""
        deny = np.empty(self.deny_version, dtype=np.uint32)
        cdef uint32_t[::1] deny_view = deny
        if self.deny_version:                # a C copy: the log grows with every listing
            memcpy(&deny_view[0], self.deny_log, self.deny_version * sizeof(uint32_t))
        return {"cards": self.cards.copy(), "accounts": self.accounts.copy(),
                "terminals": self.terminals.copy(), "ring": self.ring.copy(),
                "daily_app": self.daily_app.export(), "medical_year": self.medical_year.export(),
                "filings": self.filings.export(), "standin": self.standin.export(),
                "standin_posted": self.standin_posted.export(),
                "foreign_deny": self.foreign_deny.export(),
                "foreign_pan": self.foreign_pan.export(), "deny_log": deny,
                **self.horizon.export(horizon_since_confirmed, horizon_reuse)}

    def set_journal_key(self, key: bytes) -> None:
        """The key that enciphers card numbers in CARD_ADMIN records (derived from the data
        set's data key by the loader). Without it, records carry numbers in clear (a State
        built in memory by a test or benchmark that writes no journal to disk)."""
        cdef const uint8_t[::1] view = key
        if len(key) != 16:
            raise ValueError("the journal key is 16 bytes")
        memcpy(self.journal_key, &view[0], 16)
        self.journal_keyed = True

    def restore_horizon(self, arrays: dict) -> None:
        """Refill the idempotency horizon from a checkpoint's arrays (State.snapshot): the
        segments of earlier checkpoints it carries (``horizon_rows@UPTO``), oldest first, then
        its own. A checkpoint from before the horizon has none, and it fills from now on."""
        if "horizon_rows" not in arrays:
            return
        carried = sorted(int(name.split("@")[1]) for name in arrays
                         if name.startswith("horizon_rows@"))
        segments = [(arrays[f"horizon_rows@{u}"], arrays[f"horizon_rows_at@{u}"])
                    for u in carried]
        # A checkpoint of the first horizon build holds every row, in its dates' order.
        segments.append((arrays["horizon_rows"],
                         arrays.get("horizon_rows_at", arrays["horizon_gens"])))
        self.horizon.load(segments, arrays["horizon_gens"], arrays["horizon_dropped"])

    def restore_deny_log(self, log) -> None:
        cdef const uint32_t[::1] entries = np.ascontiguousarray(log, dtype=np.uint32)
        cdef size_t i
        cdef int failed = 0
        with nogil:
            for i in range(entries.shape[0]):
                if self.deny(entries[i] & ~DENY_REMOVED, entries[i] >> 31) != 0:
                    failed = 1
                    break
        if failed:
            raise MemoryError()

    def memory_report(self) -> dict:
        """Bytes held for cards: records, accounts and the card index, and per card; with
        the holders, what their vault allocates (its bounded cache of decrypted blocks: the
        sealed file is read by offset, never held)."""
        card_bytes = self.n_cards * sizeof(Card)
        total = card_bytes + self.accounts.nbytes + self.card_slots.nbytes
        holder_bytes = 0 if self.holders is None else self.holders.stats()["resident_bytes"]
        return {
            "cards": int(self.n_cards),
            "accounts": int(self.n_accounts),
            "card_bytes": int(card_bytes),
            "account_bytes": int(self.accounts.nbytes),
            "index_bytes": int(self.card_slots.nbytes),
            "holder_bytes": int(holder_bytes),
            "bytes_per_card": total / max(self.n_cards, 1),
            "bytes_per_card_with_holders": (total + holder_bytes) / max(self.n_cards, 1),
            "terminal_bytes": int(self.terminals.nbytes + self.ring.nbytes
                                  + self.n_terminals * sizeof(MacKey)),
        }
