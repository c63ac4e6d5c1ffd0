# cython: language_level=3
"""A MessagePack reader and writer for the types the native schema uses (arrays, integers,
strings, binary), so frames are decoded and answered without a Python object per message.

Why not msgspec here: msgspec is the schema and the peer implementation (terminals, tests,
load generator use it), but decoding with it creates a Struct per message, which the hot path
must not do. Writers emit the same smallest-form encodings msgspec emits, except where a
length must be patched after the fact (array32 / bin32 headers), which MessagePack allows.
"""

from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from onecard.core.wire cimport load_be, store_be


cdef inline int _need(MpReader* r, size_t k) noexcept nogil:
    return 0 if r.pos + k <= r.n else -1


cdef int mp_array(MpReader* r, uint32_t* count) noexcept nogil:
    cdef uint8_t b
    cdef int width
    if _need(r, 1):
        return -1
    b = r.p[r.pos]
    if 0x90 <= b <= 0x9f:
        count[0] = b & 0x0f
        r.pos += 1
        return 0
    if b == 0xdc or b == 0xdd:
        width = 2 if b == 0xdc else 4
        if _need(r, 1 + width):
            return -1
        count[0] = <uint32_t>load_be(r.p + r.pos + 1, width)
        r.pos += 1 + width
        return 0
    return -1


cdef int mp_int(MpReader* r, int64_t* v) noexcept nogil:
    cdef uint8_t b
    cdef uint64_t u
    cdef int width
    if _need(r, 1):
        return -1
    b = r.p[r.pos]
    if b <= 0x7f:
        v[0] = b
        r.pos += 1
        return 0
    if b >= 0xe0:
        v[0] = <int64_t>(<signed char>b)
        r.pos += 1
        return 0
    if b == 0xcc or b == 0xcd or b == 0xce or b == 0xcf:
        width = 1 << (b - 0xcc)
        if _need(r, 1 + width):
            return -1
        if width == 8:
            u = load_be(r.p + r.pos + 1, 8)
            if u > <uint64_t>0x7fffffffffffffff:
                return -1
            v[0] = <int64_t>u
        else:
            v[0] = <uint32_t>load_be(r.p + r.pos + 1, width)
        r.pos += 1 + width
        return 0
    if b == 0xd0 or b == 0xd1 or b == 0xd2 or b == 0xd3:
        width = 1 << (b - 0xd0)
        if _need(r, 1 + width):
            return -1
        if width == 1:
            v[0] = <signed char>r.p[r.pos + 1]
        elif width == 2:
            v[0] = <int16_t><uint16_t>load_be(r.p + r.pos + 1, 2)
        elif width == 4:
            v[0] = <int32_t><uint32_t>load_be(r.p + r.pos + 1, 4)
        else:
            v[0] = <int64_t>load_be(r.p + r.pos + 1, 8)
        r.pos += 1 + width
        return 0
    return -1


cdef int _bytes(MpReader* r, const uint8_t** s, uint32_t* n, bint text) noexcept nogil:
    cdef uint8_t b
    cdef uint32_t length
    cdef int width
    if _need(r, 1):
        return -1
    b = r.p[r.pos]
    if text and 0xa0 <= b <= 0xbf:
        length = b & 0x1f
        width = 0
    elif (text and b == 0xd9) or (not text and b == 0xc4):
        width = 1
    elif (text and b == 0xda) or (not text and b == 0xc5):
        width = 2
    elif (text and b == 0xdb) or (not text and b == 0xc6):
        width = 4
    else:
        return -1
    if width:
        if _need(r, 1 + width):
            return -1
        length = <uint32_t>load_be(r.p + r.pos + 1, width)
    if _need(r, 1 + width + length):
        return -1
    s[0] = r.p + r.pos + 1 + width
    n[0] = length
    r.pos += 1 + width + length
    return 0


cdef int mp_str(MpReader* r, const uint8_t** s, uint32_t* n) noexcept nogil:
    return _bytes(r, s, n, True)


cdef int mp_bin(MpReader* r, const uint8_t** s, uint32_t* n) noexcept nogil:
    return _bytes(r, s, n, False)


cdef int mp_skip(MpReader* r, int depth) noexcept nogil:
    """Skip one object of any type the schema may grow into; bounded nesting."""
    cdef uint8_t b
    cdef uint32_t count, _i, length
    cdef int64_t v
    cdef int width
    cdef const uint8_t* s
    if depth > 8 or _need(r, 1):
        return -1
    b = r.p[r.pos]
    if b <= 0x7f or b >= 0xe0 or 0xcc <= b <= 0xd3:
        return mp_int(r, &v)
    if b == 0xc0 or b == 0xc2 or b == 0xc3:      # nil, false, true
        r.pos += 1
        return 0
    if b == 0xca or b == 0xcb:                    # float32 / float64
        width = 4 if b == 0xca else 8
        if _need(r, 1 + width):
            return -1
        r.pos += 1 + width
        return 0
    if 0xa0 <= b <= 0xbf or b == 0xd9 or b == 0xda or b == 0xdb:
        return mp_str(r, &s, &length)
    if b == 0xc4 or b == 0xc5 or b == 0xc6:
        return mp_bin(r, &s, &length)
    if 0x90 <= b <= 0x9f or b == 0xdc or b == 0xdd:
        if mp_array(r, &count):
            return -1
        for _i in range(count):
            if mp_skip(r, depth + 1):
                return -1
        return 0
    if 0x80 <= b <= 0x8f or b == 0xde or b == 0xdf:
        if 0x80 <= b <= 0x8f:
            count = b & 0x0f
            r.pos += 1
        else:
            width = 2 if b == 0xde else 4
            if _need(r, 1 + width):
                return -1
            count = <uint32_t>load_be(r.p + r.pos + 1, width)
            r.pos += 1 + width
        for _i in range(2 * count):
            if mp_skip(r, depth + 1):
                return -1
        return 0
    return -1


cdef size_t mp_w_array(uint8_t* p, uint32_t n) noexcept nogil:
    if n < 16:
        p[0] = <uint8_t>(0x90 | n)
        return 1
    if n < 65536:
        p[0] = 0xdc
        store_be(p + 1, n, 2)
        return 3
    return mp_w_array32(p, n)


cdef size_t mp_w_array32(uint8_t* p, uint32_t n) noexcept nogil:
    p[0] = 0xdd
    store_be(p + 1, n, 4)
    return 5


cdef size_t mp_w_int(uint8_t* p, int64_t v) noexcept nogil:
    if 0 <= v <= 0x7f:
        p[0] = <uint8_t>v
        return 1
    if -32 <= v < 0:
        p[0] = <uint8_t>(<signed char>v)
        return 1
    if v > 0:
        if v <= 0xff:
            p[0] = 0xcc
            p[1] = <uint8_t>v
            return 2
        if v <= 0xffff:
            p[0] = 0xcd
            store_be(p + 1, <uint64_t>v, 2)
            return 3
        if v <= <int64_t>0xffffffff:
            p[0] = 0xce
            store_be(p + 1, <uint64_t>v, 4)
            return 5
        p[0] = 0xcf
        store_be(p + 1, <uint64_t>v, 8)
        return 9
    if v >= -128:
        p[0] = 0xd0
        p[1] = <uint8_t>(<signed char>v)
        return 2
    if v >= -32768:
        p[0] = 0xd1
        store_be(p + 1, <uint64_t>v, 2)
        return 3
    if v >= -2147483648:
        p[0] = 0xd2
        store_be(p + 1, <uint64_t>v, 4)
        return 5
    p[0] = 0xd3
    store_be(p + 1, <uint64_t>v, 8)
    return 9


cdef size_t mp_w_str(uint8_t* p, const char* s, uint32_t n) noexcept nogil:
    cdef size_t h
    if n < 32:
        p[0] = <uint8_t>(0xa0 | n)
        h = 1
    elif n < 256:
        p[0] = 0xd9
        p[1] = <uint8_t>n
        h = 2
    elif n < 65536:
        p[0] = 0xda
        store_be(p + 1, n, 2)
        h = 3
    else:
        p[0] = 0xdb
        store_be(p + 1, n, 4)
        h = 5
    memcpy(p + h, s, n)
    return h + n


cdef size_t mp_w_bin(uint8_t* p, const uint8_t* s, uint32_t n) noexcept nogil:
    cdef size_t h
    if n < 256:
        p[0] = 0xc4
        p[1] = <uint8_t>n
        h = 2
    elif n < 65536:
        p[0] = 0xc5
        store_be(p + 1, n, 2)
        h = 3
    else:
        h = mp_w_bin32_header(p, n)
    memcpy(p + h, s, n)
    return h + n


cdef size_t mp_w_bin32_header(uint8_t* p, uint32_t n) noexcept nogil:
    p[0] = 0xc6
    store_be(p + 1, n, 4)
    return 5
