# Metrics aggregated in the core: counters and histogram buckets in numpy arrays, read by a
# Prometheus collector at scrape time. Nothing here is per-message Python.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from onecard.core.state cimport N_KINDS

cdef enum:
    N_LAT_BOUNDS = 17
    N_BATCH_BOUNDS = 12
    BATCH_RING = 65536

cdef struct BatchRec:
    uint64_t recv_ns
    uint32_t id
    uint8_t proto
    uint8_t pad[3]
    uint16_t kinds[N_KINDS]             # messages of each kind in the batch

cdef class CoreMetrics:
    cdef readonly object counts          # [proto, kind, rc] decisions
    cdef readonly object latency         # [proto, kind, bucket] receive-to-written, by batch
    cdef readonly object latency_sum_us  # [proto, kind]
    cdef readonly object batch_sizes     # [proto, bucket] messages per received buffer
    cdef readonly object batch_sum       # [proto]
    cdef uint64_t* cnt
    cdef uint64_t* lat
    cdef uint64_t* lat_sum
    cdef uint64_t* bsz
    cdef uint64_t* bsum
    cdef BatchRec* ring
    cdef uint32_t next_id

    cdef uint32_t begin_batch(self, uint8_t proto) noexcept nogil
    cdef void count(self, uint32_t batch, uint8_t kind, uint8_t rc) noexcept nogil
    cdef void end_batch(self, uint32_t batch, uint32_t messages) noexcept nogil
    cdef void note_written(self, uint32_t batch) noexcept nogil
