# cython: language_level=3
"""Response codes as the core stores them: an index into protocols.codes.CODES. The enum in
codes.pxd must follow that table (checked here at import), and the two lookup tables below are
built from it."""

from libc.stdint cimport uint8_t
from libc.string cimport memset

from onecard.protocols.codes import CODES as _CODES

for _i, _name in enumerate(("00", "03", "05", "12", "13", "14", "25", "30", "33", "41", "51",
                            "57", "58", "61", "62", "91", "94", "96", "A0", "M1")):
    assert _CODES[_i][0] == _name, (_i, _name, _CODES[_i])
assert len(_CODES) <= N_RC

cdef char CHARS[2 * N_RC]
cdef uint8_t INDEX[65536]
memset(CHARS, 57, sizeof(CHARS))                   # "99" for an index with no code
memset(INDEX, RC_96, sizeof(INDEX))
for _i, (_code, _) in enumerate(_CODES):
    CHARS[2 * _i] = ord(_code[0])
    CHARS[2 * _i + 1] = ord(_code[1])
    INDEX[ord(_code[0]) << 8 | ord(_code[1])] = _i


cdef const char* rc_chars(uint8_t rc) noexcept nogil:
    return CHARS + 2 * (rc if rc < N_RC else RC_96)


cdef uint8_t rc_index(uint8_t first, uint8_t second) noexcept nogil:
    return INDEX[(<unsigned>first << 8) | second]
