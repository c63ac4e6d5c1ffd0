# cython: language_level=3
"""Counters and histograms kept by the core.

Decisions are counted as they are made (a C increment). Latency is receive-to-written, which
is only known when the server writes a batch's replies, so each batch keeps its per-kind
message counts in a ring and the server reports the write with one call per batch
(:meth:`CoreMetrics.written`); every message of the batch lands in the same bucket.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

import numpy as np

from onecard.core.codes cimport N_RC
from onecard.core.state cimport N_KINDS, N_PROTOS
from onecard.core.wire cimport monotonic_ns

# Upper bounds; a last +Inf bucket follows each list.
LATENCY_BOUNDS_US = (50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 25000,
                     50000, 100000, 250000, 1000000)
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
assert len(LATENCY_BOUNDS_US) == N_LAT_BOUNDS and len(BATCH_BOUNDS) == N_BATCH_BOUNDS

cdef uint64_t LAT_B[N_LAT_BOUNDS]
cdef uint64_t BATCH_B[N_BATCH_BOUNDS]
for _i, _b in enumerate(LATENCY_BOUNDS_US):
    LAT_B[_i] = _b
for _i, _b in enumerate(BATCH_BOUNDS):
    BATCH_B[_i] = _b
N_KIND = N_KINDS
N_PROTO = N_PROTOS
N_CODES = N_RC


cdef inline int bucket(const uint64_t* bounds, int n, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(n):
        if v <= bounds[i]:
            return i
    return n


cdef class CoreMetrics:
    def __init__(self):
        self.counts = np.zeros((N_PROTOS, N_KINDS, N_RC), dtype=np.uint64)
        self.latency = np.zeros((N_PROTOS, N_KINDS, N_LAT_BOUNDS + 1), dtype=np.uint64)
        self.latency_sum_us = np.zeros((N_PROTOS, N_KINDS), dtype=np.uint64)
        self.batch_sizes = np.zeros((N_PROTOS, N_BATCH_BOUNDS + 1), dtype=np.uint64)
        self.batch_sum = np.zeros(N_PROTOS, dtype=np.uint64)
        self.cnt = <uint64_t*><size_t>self.counts.ctypes.data
        self.lat = <uint64_t*><size_t>self.latency.ctypes.data
        self.lat_sum = <uint64_t*><size_t>self.latency_sum_us.ctypes.data
        self.bsz = <uint64_t*><size_t>self.batch_sizes.ctypes.data
        self.bsum = <uint64_t*><size_t>self.batch_sum.ctypes.data
        self.ring = <BatchRec*>calloc(BATCH_RING, sizeof(BatchRec))
        if self.ring == NULL:
            raise MemoryError()
        self.next_id = 1

    def __dealloc__(self):
        free(self.ring)

    cdef uint32_t begin_batch(self, uint8_t proto) noexcept nogil:
        cdef uint32_t batch = self.next_id
        cdef BatchRec* b = &self.ring[batch & (BATCH_RING - 1)]
        self.next_id += 1
        if self.next_id == 0:
            self.next_id = 1                 # 0 means "no batch"
        b.id = batch
        b.proto = proto
        b.recv_ns = monotonic_ns()
        memset(b.kinds, 0, sizeof(b.kinds))
        return batch

    cdef void count(self, uint32_t batch, uint8_t kind, uint8_t rc) noexcept nogil:
        cdef BatchRec* b = &self.ring[batch & (BATCH_RING - 1)]
        self.cnt[(<size_t>b.proto * N_KINDS + kind) * N_RC + rc] += 1
        if b.kinds[kind] < 65535:
            b.kinds[kind] += 1

    cdef void end_batch(self, uint32_t batch, uint32_t messages) noexcept nogil:
        cdef BatchRec* b = &self.ring[batch & (BATCH_RING - 1)]
        self.bsz[<size_t>b.proto * (N_BATCH_BOUNDS + 1)
                 + bucket(BATCH_B, N_BATCH_BOUNDS, messages)] += 1
        self.bsum[b.proto] += messages

    def written(self, uint32_t batch) -> None:
        """The replies of ``batch`` are written: record their receive-to-written latency."""
        self.note_written(batch)

    cdef void note_written(self, uint32_t batch) noexcept nogil:
        # written(), for compiled callers (core/intake.pyx).
        cdef BatchRec* b = &self.ring[batch & (BATCH_RING - 1)]
        cdef uint64_t us
        cdef int i, k
        if batch == 0 or b.id != batch:
            return                           # overwritten by 65536 newer batches: drop
        us = (monotonic_ns() - b.recv_ns) // 1000
        i = bucket(LAT_B, N_LAT_BOUNDS, us)
        for k in range(N_KINDS):
            if b.kinds[k]:
                self.lat[(<size_t>b.proto * N_KINDS + k) * (N_LAT_BOUNDS + 1) + i] += b.kinds[k]
                self.lat_sum[<size_t>b.proto * N_KINDS + k] += us * b.kinds[k]
        b.id = 0
