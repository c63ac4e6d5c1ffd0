from onecard.core.authorise cimport Authoriser, Res, Txn

cdef void decide(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef bint retransmitted(Authoriser a, Txn* t) noexcept nogil
