from libc.stdint cimport uint32_t

from onecard.core.authorise cimport Authoriser, Res, Txn

cdef void verify(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef void venue(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef void medical(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef void medical_refund(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef void medical_totals(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef int masked_name(Authoriser a, uint32_t card, char* name) noexcept nogil
