# Values of ISO 8583 fields as the switch reads and writes them (core/iso_path.pyx): digits
# of numeric and text fields, numbers as text, field 44's labels, and the checks of a 0320
# batch upload's fields. Inline: each is a few instructions on the hot path's decoded fields.
from libc.stdint cimport uint8_t, uint64_t

from onecard.core.isocodec cimport IsoMsg, IsoWriter, has_field, w_ans

cdef enum:
    FIELD60_DIGITS = 11          # type n2, batch number n6, network code n3
    UPLOAD_ITEM = 201            # 0320 network codes: a transaction of the batch
    UPLOAD_END = 202             # 0320: the end of the upload (field 48: how many, n4)
    UPLOAD_COUNT_CHARS = 4


cdef inline bint FIELD_IS_TEXT(int f) noexcept nogil:
    return f == 48 or f == 49 or f == 51


cdef inline uint64_t digits(IsoMsg* m, int f, int start, int count) noexcept nogil:
    """Digits [start, start + count) of a numeric or text field as a number (missing ones
    count as zero)."""
    cdef uint64_t v = 0
    cdef int i, d
    cdef const uint8_t* p = m.p + m.off[f]
    for i in range(start, start + count):
        if i >= m.nlen[f]:
            d = 0
        elif FIELD_IS_TEXT(f):
            d = p[i] - 48
        else:
            d = (p[i >> 1] >> 4) if (i & 1) == 0 else (p[i >> 1] & 15)
        v = v * 10 + (d if 0 <= d <= 9 else 0)
    return v


cdef inline void put_text_number(IsoWriter* w, int f, uint64_t v, int width) noexcept nogil:
    cdef char s[24]
    cdef int i
    for i in range(width - 1, -1, -1):
        s[i] = <char>(48 + v % 10)
        v //= 10
    w_ans(w, f, s, width)


cdef inline int number_text(char* s, uint64_t v, int width) noexcept nogil:
    cdef int i
    for i in range(width - 1, -1, -1):
        s[i] = <char>(48 + v % 10)
        v //= 10
    return width


cdef inline int field_label(char* text, char letter, int f) noexcept nogil:
    """Field 44's text for a format error: the letter, then the field number (1..128)."""
    cdef int n = 1
    text[0] = letter
    if f >= 100:
        text[n] = <char>(48 + f // 100)
        n += 1
    if f >= 10:
        text[n] = <char>(48 + (f // 10) % 10)
        n += 1
    text[n] = <char>(48 + f % 10)
    return n + 1


cdef inline int malformed_upload(IsoMsg* m) noexcept nogil:
    """The first field of a 0320 (all mandatory ones present) whose value cannot be an
    upload's, 0 when none: field 60 of 11 digits naming a transaction or the end, a
    transaction of a purchase or a void, an end's count of 4 digits, a settlement date
    (field 15, optional) that is a month and a day."""
    cdef uint64_t code = digits(m, 60, 8, 3), date, proc
    cdef int i
    if m.nlen[60] != FIELD60_DIGITS or (code != UPLOAD_ITEM and code != UPLOAD_END):
        return 60
    if code == UPLOAD_END:
        if m.nlen[48] != UPLOAD_COUNT_CHARS:
            return 48
        for i in range(UPLOAD_COUNT_CHARS):
            if not 48 <= m.p[m.off[48] + i] <= 57:
                return 48
    else:
        proc = digits(m, 3, 0, 2)
        if proc != 0 and proc != 20:
            return 3
    if has_field(m, 15):
        date = digits(m, 15, 0, 4)
        if not (1 <= date // 100 <= 12 and 1 <= date % 100 <= 31):
            return 15
    return 0
