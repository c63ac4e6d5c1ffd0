# ISO 8583 codec driven by the field table in protocols/iso8583_fields.py.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    K_N = 1
    K_Z = 2
    K_AN = 3
    K_ANS = 4
    K_B = 5
    N_FIELDS = 129          # index 0 unused, 1 = secondary bitmap
    PREFIX_BYTES = 2        # frame length prefix
    TPDU_BYTES = 5
    HDR_BYTES = 11          # TPDU + 6-byte header
    MTI_OFF = 11
    BITMAP_OFF = 13
    MESSAGE_BYTES_MIN = 21        # TPDU + header + MTI + primary bitmap
    REPLY_MAX = 1024        # bound on one encoded reply; callers reserve this much

cdef enum DecodeError:
    DEC_OK = 0
    DEC_SHORT = -1          # shorter than TPDU + header + MTI + bitmap
    DEC_MTI = -2            # MTI is not BCD
    DEC_FIELD = -3          # err_field names the field
    DEC_TRAILING = -4       # bytes left after the last field

cdef struct FieldDef:
    uint8_t kind
    uint8_t len_type        # 0 fixed, 2 LLVAR, 3 LLLVAR
    uint16_t len_max

cdef struct IsoMsg:
    const uint8_t* p        # first byte of the TPDU (after the 2-byte length)
    uint32_t n              # bytes from TPDU to end of message
    uint32_t mti            # decimal, e.g. 200 for "0200"
    uint64_t bitmap[2]
    uint16_t off[129]       # offset from p of each present field's value
    uint16_t blen[129]      # value bytes
    uint16_t nlen[129]      # value length in the field's own unit (digits, characters, bytes)
    int err_field

cdef struct IsoWriter:
    uint8_t* buf
    size_t start            # where this frame's length prefix is
    size_t pos
    uint64_t bitmap
    int last_field

cdef int iso_decode(const uint8_t* p, uint32_t n, IsoMsg* m) noexcept nogil
cdef int field_u64(IsoMsg* m, int f, uint64_t* out) noexcept nogil
cdef int field_pan(IsoMsg* m, uint64_t* pan) noexcept nogil

cdef void w_begin(IsoWriter* w, uint8_t* buf, size_t start, const uint8_t* tpdu_hdr,
                  uint32_t mti) noexcept nogil
cdef void reply_header(const uint8_t* req, uint32_t req_n, uint8_t* out11) noexcept nogil
cdef void w_digits(IsoWriter* w, int f, const char* digits, int n) noexcept nogil
cdef void w_n(IsoWriter* w, int f, uint64_t value) noexcept nogil
cdef void w_copy(IsoWriter* w, IsoMsg* m, int f) noexcept nogil
cdef void w_ans(IsoWriter* w, int f, const char* s, int n) noexcept nogil
cdef void w_b(IsoWriter* w, int f, const uint8_t* s, int n) noexcept nogil
cdef size_t w_mac_begin(IsoWriter* w) noexcept nogil
cdef size_t w_end(IsoWriter* w) noexcept nogil

cdef inline uint64_t bcd_u64(const uint8_t* p, int ndigits) noexcept nogil:
    """Packed BCD digits (left-aligned, at most 19) as an integer; nibbles are not checked."""
    cdef uint64_t v = 0
    cdef int i
    for i in range(ndigits):
        v = v * 10 + ((p[i >> 1] >> 4) if (i & 1) == 0 else (p[i >> 1] & 15))
    return v


cdef inline bint has_field(IsoMsg* m, int f) noexcept nogil:
    if f <= 64:
        return (m.bitmap[0] >> (64 - f)) & 1
    return (m.bitmap[1] >> (128 - f)) & 1
