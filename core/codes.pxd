# Response codes by their index in protocols/codes.CODES (checked at import by codes.pyx).
from libc.stdint cimport uint8_t

cdef enum RC:
    RC_00 = 0
    RC_03 = 1
    RC_05 = 2
    RC_12 = 3
    RC_13 = 4
    RC_14 = 5
    RC_25 = 6
    RC_30 = 7
    RC_33 = 8
    RC_41 = 9
    RC_51 = 10
    RC_57 = 11
    RC_58 = 12
    RC_61 = 13
    RC_62 = 14
    RC_91 = 15
    RC_94 = 16
    RC_96 = 17
    RC_A0 = 18
    RC_M1 = 19          # remote medical treatment without a filing: settle in cash
    RC_77 = 20          # 日切: the terminal's session is of an earlier settlement date
    RC_95 = 21          # 0320 for a batch that is not the terminal's unbalanced one
    RC_80 = 22          # a settlement date not yet begun
    N_RC = 32           # room to append codes without changing array shapes

cdef const char* rc_chars(uint8_t rc) noexcept nogil      # the two characters of a code
cdef uint8_t rc_index(uint8_t first, uint8_t second) noexcept nogil   # RC_96 if unknown
