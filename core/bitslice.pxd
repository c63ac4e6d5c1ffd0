# Bitsliced, constant-time DES/3DES for the X9.19 MACs of many messages at once (issue 30;
# des_bitslice.h). Added beside crypto's table-based MACs: the process does not use it yet.
from libc.stdint cimport uint8_t

cdef extern from "des_bitslice.h" nogil:
    ctypedef struct OcBsJob:
        const uint8_t* key     # K1 K2 (16 bytes, K3 = K1) or K1 K2 K3 (24 bytes)
        size_t key_len
        const uint8_t* data
        size_t n
        uint8_t* out8

cdef void bs_x919_many(const OcBsJob* jobs, size_t count) noexcept nogil
