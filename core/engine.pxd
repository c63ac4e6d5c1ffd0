# The Engine's declaration, so that compiled callers (core/intake.pyx) reach its per-buffer
# entry without a Python call: ``feed`` is what ``Engine.process`` runs, on a pointer.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from onecard.core.authorise cimport Authoriser
from onecard.core.forward cimport Router
from onecard.core.iso_path cimport IsoPath
from onecard.core.journal cimport Journal
from onecard.core.metrics cimport CoreMetrics
from onecard.core.native_path cimport NativePath
from onecard.core.outbuf cimport OutBuf
from onecard.core.state cimport State


cdef class Engine:
    cdef readonly State state
    cdef readonly Journal journal
    cdef readonly Authoriser authoriser
    cdef readonly CoreMetrics metrics
    cdef readonly Router router
    cdef IsoPath iso
    cdef NativePath native
    cdef OutBuf out
    cdef public int64_t clock_offset_us     # tests move the clock; 0 in production
    cdef public int64_t clock_us            # simulated time when non-zero (bench/sim)
    cdef readonly object shed               # uint64[protocol, reason]: requests refused
    cdef uint64_t* shed_p

    cdef int64_t now_us(self) noexcept nogil
    cdef bytes feed(self, int proto, const uint8_t* data, size_t n, size_t* consumed,
                    uint32_t* batch, int* close)
