from onecard.core.authorise cimport Authoriser, Res, Txn

cdef void tap(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef void topup(Authoriser a, Txn* t, Res* r) noexcept nogil
