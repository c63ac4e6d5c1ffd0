from libc.stdint cimport int64_t

from onecard.core.authorise cimport Authoriser, Res, Txn
from onecard.core.state cimport RingEntry

cdef void purchase(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef void balance(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef void reversal(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef bint reversal_answered(Authoriser a, Txn* t, RingEntry* e, bint known, int64_t idx,
                            Res* r) noexcept nogil
cdef void void_purchase(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef void settle(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef void batch_upload(Authoriser a, Txn* t, Res* r) noexcept nogil
