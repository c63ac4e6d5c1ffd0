from onecard.core.authorise cimport Authoriser, Res, Txn

cdef void purchase(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef void balance(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef void reversal(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef void void_purchase(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef void settle(Authoriser a, Txn* t, Res* r) noexcept nogil
cdef void batch_upload(Authoriser a, Txn* t, Res* r) noexcept nogil
