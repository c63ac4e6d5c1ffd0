# cython: language_level=3
"""Open-addressing hash map (linear probing, multiply-shift) from uint64 to two int64s.

Bounded: ``size_max`` entries at most (``upsert`` returns NULL past it, and callers answer
with a system error rather than grow without limit); grows by doubling below that at a load
of 0.7. ``reserve`` does what can fail of an insert ahead of it, so that a caller can make
room before it changes anything else. Exported and restored as numpy arrays for checkpoints.
"""

from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

import numpy as np

cdef extern from *:
    """
    static inline uint64_t onecard_map_home(uint64_t k, uint64_t n) {
        k ^= k >> 33; k *= 0xff51afd7ed558ccdULL; k ^= k >> 33;
        return (uint64_t)(((unsigned __int128)k * n) >> 64);
    }
    """
    uint64_t map_home "onecard_map_home" (uint64_t k, uint64_t n) nogil

ENTRY_DTYPE = np.dtype([("key", "<u8"), ("a", "<i8"), ("b", "<i8")])
assert ENTRY_DTYPE.itemsize == sizeof(Entry)


cdef class U64Map:
    def __cinit__(self, uint64_t capacity=1024, uint64_t size_max=1 << 26):
        self.cap = max(capacity, 16)
        self.size_max = size_max
        self.size = 0
        self.slots = <Entry*>calloc(self.cap, sizeof(Entry))
        if self.slots == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.slots)

    cdef Entry* find(self, uint64_t key) noexcept nogil:
        cdef uint64_t stored = key + 1
        cdef uint64_t h = map_home(stored, self.cap)
        while self.slots[h].key != 0:
            if self.slots[h].key == stored:
                return &self.slots[h]
            h += 1
            if h == self.cap:
                h = 0
        return NULL

    cdef int _grow(self) noexcept nogil:
        cdef uint64_t old_cap = self.cap, i, h
        cdef Entry* old = self.slots
        cdef Entry* fresh = <Entry*>calloc(old_cap * 2, sizeof(Entry))
        if fresh == NULL:
            return -1
        self.slots = fresh
        self.cap = old_cap * 2
        for i in range(old_cap):
            if old[i].key != 0:
                h = map_home(old[i].key, self.cap)
                while fresh[h].key != 0:
                    h += 1
                    if h == self.cap:
                        h = 0
                fresh[h] = old[i]
        free(old)
        return 0

    cdef int reserve(self, uint64_t key) noexcept nogil:
        """Room for key: afterwards, until another key is inserted, upsert(key) cannot fail.
        -1 when the map is full or out of memory."""
        if self.find(key) != NULL:
            return 0
        if self.size >= self.size_max:
            return -1
        if (self.size + 1) * 10 > self.cap * 7 and self._grow() != 0:
            return -1
        return 0

    cdef Entry* upsert(self, uint64_t key) noexcept nogil:
        """The entry for key, created zeroed if absent; NULL when full or out of memory.
        Pointers from find/upsert are invalid after the next upsert."""
        cdef Entry* e = self.find(key)
        cdef uint64_t h
        if e != NULL:
            return e
        if self.reserve(key) != 0:
            return NULL
        h = map_home(key + 1, self.cap)
        while self.slots[h].key != 0:
            h += 1
            if h == self.cap:
                h = 0
        self.slots[h].key = key + 1
        self.slots[h].a = 0
        self.slots[h].b = 0
        self.size += 1
        return &self.slots[h]

    # ---- Python API ----------------------------------------------------------------------

    def get(self, uint64_t key):
        """(a, b) for key, or None."""
        cdef Entry* e = self.find(key)
        return None if e == NULL else (e.a, e.b)

    def set(self, uint64_t key, int64_t a, int64_t b) -> None:
        cdef Entry* e = self.upsert(key)
        if e == NULL:
            raise MemoryError("map is full")
        e.a = a
        e.b = b

    def export(self) -> np.ndarray:
        """The entries (key as given to set/upsert) as an ENTRY_DTYPE array."""
        out = np.zeros(self.size, dtype=ENTRY_DTYPE)
        cdef uint64_t i, k = 0
        for i in range(self.cap):
            if self.slots[i].key != 0:
                out[k] = (self.slots[i].key - 1, self.slots[i].a, self.slots[i].b)
                k += 1
        return out

    def load(self, entries) -> None:
        """Replace the contents with exported entries."""
        memset(self.slots, 0, self.cap * sizeof(Entry))
        self.size = 0
        for key, a, b in np.asarray(entries, dtype=ENTRY_DTYPE).tolist():
            self.set(key, a, b)

    def __len__(self) -> int:
        return self.size
