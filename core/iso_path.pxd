from libc.stdint cimport uint8_t, uint32_t

from libc.stdint cimport int64_t

from onecard.core.authorise cimport Authoriser, Res, Txn
from onecard.core.isocodec cimport IsoMsg
from onecard.core.metrics cimport CoreMetrics
from onecard.core.outbuf cimport OutBuf
from onecard.core.state cimport State

cdef class IsoPath:
    cdef Authoriser auth
    cdef State st
    cdef CoreMetrics mx
    cdef uint32_t max_frame
    cdef size_t run(self, const uint8_t* p, size_t n, OutBuf* out, uint32_t batch,
                    uint32_t* messages, int* close) noexcept nogil
    cdef void format_error(self, IsoMsg* m, int rc, const uint8_t* hdr, OutBuf* out,
                           uint32_t batch) noexcept nogil
    cdef void one(self, const uint8_t* msg, uint32_t length, OutBuf* out,
                  uint32_t batch) noexcept nogil
    cdef void reply(self, IsoMsg* m, uint8_t kind, Txn* t, Res* r, const uint8_t* hdr,
                    bint reply_mac, int64_t term_idx, OutBuf* out) noexcept nogil
