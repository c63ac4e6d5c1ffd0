# cython: language_level=3
"""ISO 8583 decoder and writer, driven by ``protocols/iso8583_fields.FIELDS``.

Decoding does not copy: it records where each present field's value lies in the received
buffer (offset, byte length, logical length) after validating its length prefix, its bound and
its characters, so the authoriser reads only the fields it needs. Writing appends fields in
ascending order into a caller-reserved buffer (REPLY_MAX bytes per message).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.string cimport memcpy, memset

from onecard.core.wire cimport load_be

from onecard.protocols.iso8583_fields import FIELDS as _TABLE

cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil

cdef FieldDef FIELDS[129]
_KINDS = {"n": K_N, "z": K_Z, "an": K_AN, "ans": K_ANS, "b": K_B}


def _load_table() -> None:
    memset(FIELDS, 0, sizeof(FIELDS))
    for f in _TABLE:
        assert 2 <= f.number <= 128 and f.len_type in (0, 2, 3), f
        assert f.len_type != 2 or f.len_max <= 99, f
        FIELDS[f.number].kind = _KINDS[f.kind]
        FIELDS[f.number].len_type = f.len_type
        FIELDS[f.number].len_max = f.len_max


_load_table()


cdef inline int _bcd2(uint8_t b) noexcept nogil:
    """Two BCD digits as an int, -1 when either nibble is not a digit."""
    if (b >> 4) > 9 or (b & 15) > 9:
        return -1
    return (b >> 4) * 10 + (b & 15)


cdef inline bint _digits_ok(const uint8_t* p, int ndigits, bint track) noexcept nogil:
    cdef int i
    cdef uint8_t nib
    for i in range(ndigits):
        nib = (p[i >> 1] >> 4) if (i & 1) == 0 else (p[i >> 1] & 15)
        if nib > 9 and not (track and nib == 13):
            return False
    if ndigits & 1 and (p[ndigits >> 1] & 15) != 0:
        return False                     # pad nibble must be 0
    return True


cdef inline bint _text_ok(const uint8_t* p, int n) noexcept nogil:
    # Printable ASCII only (protocols/iso8583_fields.py): a byte above 0x7e in a field the
    # reply echoes (41, 42) would make the reply unreadable to a strict client.
    cdef int i
    for i in range(n):
        if p[i] < 0x20 or p[i] > 0x7e:
            return False
    return True


cdef inline int _decode_header(const uint8_t* p, uint32_t n, IsoMsg* m) noexcept nogil:
    """MTI and bitmaps: where the first field starts, or a DecodeError (negative)."""
    cdef int hi, lo
    m.p = p
    m.n = n
    m.mti = 0
    m.err_field = 0
    m.bitmap[0] = 0
    m.bitmap[1] = 0
    if n < MESSAGE_BYTES_MIN:
        return DEC_SHORT
    hi = _bcd2(p[MTI_OFF])
    lo = _bcd2(p[MTI_OFF + 1])
    if hi < 0 or lo < 0:
        return DEC_MTI
    m.mti = hi * 100 + lo
    m.bitmap[0] = load_be(p + BITMAP_OFF, 8)
    if not m.bitmap[0] >> 63:
        return BITMAP_OFF + 8
    if n < BITMAP_OFF + 16:
        m.err_field = 1
        return DEC_FIELD
    m.bitmap[1] = load_be(p + BITMAP_OFF + 8, 8)
    return BITMAP_OFF + 16


cdef inline int _field_count(const uint8_t* p, uint32_t n, FieldDef d,
                             uint32_t* pos) noexcept nogil:
    """A field's length in its own unit: fixed, or read from its length prefix (pos moves past
    it). -1 when the prefix is cut short or not BCD, or the length is above the bound."""
    cdef int count
    if d.len_type == 0:
        count = d.len_max
    elif d.len_type == 2:
        if pos[0] + 1 > n:
            return -1
        count = _bcd2(p[pos[0]])
        pos[0] += 1
    else:
        if pos[0] + 2 > n or p[pos[0]] > 9:
            return -1
        count = _bcd2(p[pos[0] + 1])
        if count < 0:
            return -1
        count += p[pos[0]] * 100
        pos[0] += 2
    return -1 if count > d.len_max else count


cdef int iso_decode(const uint8_t* p, uint32_t n, IsoMsg* m) noexcept nogil:
    """Locate and validate every field of one message (TPDU onwards). DEC_OK or an error."""
    cdef int f, w, lz, count, start
    cdef uint32_t pos
    cdef uint64_t bits
    cdef FieldDef d
    start = _decode_header(p, n, m)
    if start < 0:
        return start
    pos = <uint32_t>start
    for w in range(2):
        bits = m.bitmap[w]
        if w == 0:
            bits &= ~(<uint64_t>1 << 63)  # bit 1 is the secondary bitmap itself
        while bits:
            lz = __builtin_clzll(bits)
            bits &= ~(<uint64_t>1 << (63 - lz))
            f = w * 64 + lz + 1
            d = FIELDS[f]
            m.err_field = f
            if d.kind == 0:
                return DEC_FIELD               # not in the table
            count = _field_count(p, n, d, &pos)
            if count < 0:
                return DEC_FIELD
            m.nlen[f] = <uint16_t>count
            if d.kind == K_N or d.kind == K_Z:
                m.blen[f] = <uint16_t>((count + 1) >> 1)
            else:
                m.blen[f] = <uint16_t>count
            if pos + m.blen[f] > n:
                return DEC_FIELD
            if d.kind == K_N or d.kind == K_Z:
                if not _digits_ok(p + pos, count, d.kind == K_Z):
                    return DEC_FIELD
            elif d.kind == K_AN or d.kind == K_ANS:
                if not _text_ok(p + pos, count):
                    return DEC_FIELD
            m.off[f] = <uint16_t>pos
            pos += m.blen[f]
    m.err_field = 0
    if pos != n:
        return DEC_TRAILING
    return DEC_OK


cdef int field_u64(IsoMsg* m, int f, uint64_t* out) noexcept nogil:
    """A numeric field (up to 19 digits) as an integer; -1 if absent or not numeric."""
    if not has_field(m, f) or FIELDS[f].kind != K_N or m.nlen[f] > 19:
        return -1
    out[0] = bcd_u64(m.p + m.off[f], m.nlen[f])
    return 0


cdef int field_pan(IsoMsg* m, uint64_t* pan) noexcept nogil:
    """The card number from field 2, else from track 2 (field 35) up to its separator."""
    cdef uint64_t v = 0
    cdef int i, nib, n
    cdef const uint8_t* p
    if has_field(m, 2):
        if m.nlen[2] < 12:
            return -1
        return field_u64(m, 2, pan)
    if not has_field(m, 35):
        return -1
    p = m.p + m.off[35]
    n = 0
    for i in range(m.nlen[35]):
        nib = (p[i >> 1] >> 4) if (i & 1) == 0 else (p[i >> 1] & 15)
        if nib == 13:
            break
        v = v * 10 + nib
        n += 1
    if n < 12 or n > 19:
        return -1
    pan[0] = v
    return 0


# ---- writer ----------------------------------------------------------------------------------

cdef void reply_header(const uint8_t* req, uint32_t req_n, uint8_t* out11) noexcept nogil:
    """TPDU and header for a reply: destination and source swapped, header echoed."""
    memset(out11, 0, HDR_BYTES)
    out11[0] = 0x60
    if req_n >= TPDU_BYTES:
        out11[1] = req[3]
        out11[2] = req[4]
        out11[3] = req[1]
        out11[4] = req[2]
    if req_n >= HDR_BYTES:
        memcpy(out11 + TPDU_BYTES, req + TPDU_BYTES, HDR_BYTES - TPDU_BYTES)


cdef void w_begin(IsoWriter* w, uint8_t* buf, size_t start, const uint8_t* tpdu_hdr,
                  uint32_t mti) noexcept nogil:
    w.buf = buf
    w.start = start
    w.pos = start + PREFIX_BYTES
    memcpy(buf + w.pos, tpdu_hdr, HDR_BYTES)
    w.pos += HDR_BYTES
    buf[w.pos] = <uint8_t>(((mti // 1000) % 10) << 4 | (mti // 100) % 10)
    buf[w.pos + 1] = <uint8_t>(((mti // 10) % 10) << 4 | mti % 10)
    w.pos += 2 + 8                       # bitmap is written by w_mac_begin / w_end
    w.bitmap = 0
    w.last_field = 1


cdef inline void _mark(IsoWriter* w, int f) noexcept nogil:
    w.bitmap |= <uint64_t>1 << (64 - f)
    w.last_field = f


cdef inline void _prefix(IsoWriter* w, int len_type, int count) noexcept nogil:
    if len_type == 2:
        w.buf[w.pos] = <uint8_t>((count // 10) << 4 | count % 10)
        w.pos += 1
    elif len_type == 3:
        w.buf[w.pos] = <uint8_t>(count // 100)
        w.buf[w.pos + 1] = <uint8_t>(((count // 10) % 10) << 4 | count % 10)
        w.pos += 2


cdef void w_n(IsoWriter* w, int f, uint64_t value) noexcept nogil:
    """A fixed-length numeric field from an integer (zero-filled on the left)."""
    cdef char digits[24]
    cdef int n = FIELDS[f].len_max, i
    for i in range(n - 1, -1, -1):
        digits[i] = <char>(48 + value % 10)
        value //= 10
    w_digits(w, f, digits, n)


cdef void w_digits(IsoWriter* w, int f, const char* digits, int n) noexcept nogil:
    """A numeric or track field from ASCII digits ('=' or 'D' separates track data)."""
    cdef int i, nib
    cdef uint8_t* out
    _prefix(w, FIELDS[f].len_type, n)
    out = w.buf + w.pos
    memset(out, 0, (n + 1) >> 1)
    for i in range(n):
        nib = 13 if digits[i] == 61 or digits[i] == 68 else digits[i] - 48
        if i & 1:
            out[i >> 1] |= <uint8_t>nib
        else:
            out[i >> 1] = <uint8_t>(nib << 4)
    w.pos += (n + 1) >> 1
    _mark(w, f)


cdef void w_copy(IsoWriter* w, IsoMsg* m, int f) noexcept nogil:
    """Echo a request field byte for byte, length prefix included."""
    cdef int prefix = FIELDS[f].len_type - 1 if FIELDS[f].len_type else 0
    cdef size_t n = prefix + m.blen[f]
    memcpy(w.buf + w.pos, m.p + m.off[f] - prefix, n)
    w.pos += n
    _mark(w, f)


cdef void w_ans(IsoWriter* w, int f, const char* s, int n) noexcept nogil:
    """Text field; fixed-length fields are space-padded or cut to their length."""
    cdef FieldDef d = FIELDS[f]
    if d.len_type == 0:
        if n > d.len_max:
            n = d.len_max
        memcpy(w.buf + w.pos, s, n)
        memset(w.buf + w.pos + n, 32, d.len_max - n)
        w.pos += d.len_max
    else:
        if n > d.len_max:
            n = d.len_max
        _prefix(w, d.len_type, n)
        memcpy(w.buf + w.pos, s, n)
        w.pos += n
    _mark(w, f)


cdef void w_b(IsoWriter* w, int f, const uint8_t* s, int n) noexcept nogil:
    cdef FieldDef d = FIELDS[f]
    if d.len_type:
        _prefix(w, d.len_type, n)
    memcpy(w.buf + w.pos, s, n)
    w.pos += n
    _mark(w, f)


cdef inline void _put_bitmap(IsoWriter* w) noexcept nogil:
    cdef int i
    cdef uint8_t* p = w.buf + w.start + PREFIX_BYTES + BITMAP_OFF
    for i in range(8):
        p[i] = <uint8_t>(w.bitmap >> (56 - 8 * i))


cdef size_t w_mac_begin(IsoWriter* w) noexcept nogil:
    """Set bit 64 and fix the bitmap; returns where the MAC input (MTI onwards) starts."""
    w.bitmap |= 1
    _put_bitmap(w)
    return w.start + PREFIX_BYTES + MTI_OFF


cdef size_t w_end(IsoWriter* w) noexcept nogil:
    """Write bitmap and length prefix; returns the end offset of the frame."""
    cdef size_t n = w.pos - w.start - PREFIX_BYTES
    _put_bitmap(w)
    w.buf[w.start] = <uint8_t>(n >> 8)
    w.buf[w.start + 1] = <uint8_t>(n & 255)
    return w.pos


# ---- Python API (tests, tools; not the hot path) ---------------------------------------------

class IsoFormatError(ValueError):
    """A message that does not follow the field table; ``field`` names where (0 = frame)."""

    def __init__(self, message: str, field: int = 0):
        super().__init__(message)
        self.field = field


def _field_text(int f, const uint8_t[::1] data, int off, int nlen, int blen):
    cdef int kind = FIELDS[f].kind
    raw = bytes(data[off:off + blen])
    if kind == K_N or kind == K_Z:
        return raw.hex().upper()[:nlen].replace("D", "=")
    if kind == K_B:
        return raw
    return raw.decode("latin-1")


def decode_message(message: bytes) -> tuple[bytes, str, dict]:
    """Decode one message (TPDU onwards, no length prefix) into (tpdu+header, MTI, fields).

    Numeric and track fields come back as digit strings ('=' as separator), text fields as str,
    binary fields as bytes.
    """
    cdef IsoMsg m
    cdef const uint8_t[::1] data = message
    rc = iso_decode(&data[0], len(message), &m) if len(message) else DEC_SHORT
    if rc == DEC_SHORT:
        raise IsoFormatError("message shorter than TPDU + header + MTI + bitmap")
    if rc == DEC_MTI:
        raise IsoFormatError("MTI is not BCD")
    if rc == DEC_FIELD:
        raise IsoFormatError(f"field {m.err_field} malformed or not in the field table",
                             m.err_field)
    if rc == DEC_TRAILING:
        raise IsoFormatError("bytes left after the last field")
    fields = {}
    for f in range(2, 129):
        if has_field(&m, f):
            fields[f] = _field_text(f, data, m.off[f], m.nlen[f], m.blen[f])
    return bytes(data[:HDR_BYTES]), f"{m.mti:04d}", fields


def encode_message(tpdu_header: bytes, mti: str, fields: dict, *, prefix: bool = True) -> bytes:
    """Encode a message from the same representation decode_message returns.

    Field 64 is written as given (compute it with :func:`mac_input` first).
    """
    cdef IsoWriter w
    cdef bytearray out = bytearray(PREFIX_BYTES + HDR_BYTES + 2 + 8 + 4096)
    cdef uint8_t* buf = out
    cdef FieldDef d
    if len(tpdu_header) != HDR_BYTES:
        raise ValueError(f"TPDU + header must be {HDR_BYTES} bytes")
    if len(mti) != 4 or not mti.isdigit():
        raise ValueError(f"MTI must be 4 digits, got {mti!r}")
    w_begin(&w, buf, 0, tpdu_header, int(mti))
    for f in sorted(fields):
        if not 2 <= f <= 64:
            raise ValueError(f"field {f}: only fields 2..64 can be encoded")
        d = FIELDS[f]
        if d.kind == 0:
            raise ValueError(f"field {f} is not in the field table")
        value = fields[f]
        if d.kind == K_N or d.kind == K_Z:
            s = str(value)
            ok = s.isdigit() or (d.kind == K_Z and s.replace("=", "").isdigit())
            if not ok or (d.len_type == 0 and len(s) != d.len_max) or len(s) > d.len_max:
                raise ValueError(f"field {f}: {len(s)} digits, expected "
                                 f"{'' if d.len_type == 0 else 'at most '}{d.len_max}")
            b = s.encode()
            w_digits(&w, f, b, len(b))
        elif d.kind == K_B:
            b = bytes(value)
            if (d.len_type == 0 and len(b) != d.len_max) or len(b) > d.len_max:
                raise ValueError(f"field {f}: {len(b)} bytes, expected {d.len_max}")
            w_b(&w, f, b, len(b))
        else:
            b = str(value).encode("latin-1")
            if (d.len_type == 0 and len(b) != d.len_max) or len(b) > d.len_max:
                raise ValueError(f"field {f}: {len(b)} characters, expected {d.len_max}")
            w_ans(&w, f, b, len(b))
        if w.pos > len(out) - 1100:
            raise ValueError("message too long")
    if 64 in fields:
        w.bitmap |= 1
    end = w_end(&w)
    return bytes(out[0 if prefix else PREFIX_BYTES:end])


def mac_input(message: bytes) -> bytes:
    """The bytes a MAC covers: from the MTI up to (not including) field 64's value.

    ``message`` is TPDU onwards, and must already have bit 64 set with field 64 present.
    """
    cdef IsoMsg m
    cdef const uint8_t[::1] data = message
    if iso_decode(&data[0], len(message), &m) != DEC_OK or not has_field(&m, 64):
        raise IsoFormatError("not a well-formed message with field 64")
    return bytes(data[MTI_OFF:m.off[64]])


# ---- benchmark hooks: decode and encode in bulk, no Python object per message ---------------

def decode_frames(data) -> int:
    """Decode every length-prefixed message in ``data``; returns how many were well formed."""
    cdef Py_buffer view
    cdef IsoMsg m
    cdef size_t pos = 0
    cdef uint32_t length, ok = 0
    cdef const uint8_t* p
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p = <const uint8_t*>view.buf
        with nogil:
            while <size_t>view.len - pos >= PREFIX_BYTES:
                length = <uint32_t>load_be(p + pos, PREFIX_BYTES)
                if <size_t>view.len - pos - PREFIX_BYTES < length:
                    break
                if iso_decode(p + pos + PREFIX_BYTES, length, &m) == DEC_OK:
                    ok += 1
                pos += PREFIX_BYTES + length
    finally:
        PyBuffer_Release(&view)
    return ok


def reencode_frames(data) -> bytes:
    """Decode every message in ``data`` and encode it again field by field through the
    writer (the work of building a reply of the same shape)."""
    cdef Py_buffer view
    cdef IsoMsg m
    cdef IsoWriter w
    cdef size_t pos = 0, end = 0
    cdef uint32_t length
    cdef int f
    cdef const uint8_t* p
    out = bytearray(len(data) + REPLY_MAX)
    cdef uint8_t* o = <uint8_t*><char*>out
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p = <const uint8_t*>view.buf
        with nogil:
            while <size_t>view.len - pos >= PREFIX_BYTES:
                length = <uint32_t>load_be(p + pos, PREFIX_BYTES)
                if (<size_t>view.len - pos - PREFIX_BYTES < length
                        or iso_decode(p + pos + PREFIX_BYTES, length, &m) != DEC_OK):
                    break
                w_begin(&w, o, end, m.p, m.mti)
                for f in range(2, 65):
                    if has_field(&m, f):
                        w_copy(&w, &m, f)
                end = w_end(&w)
                pos += PREFIX_BYTES + length
    finally:
        PyBuffer_Release(&view)
    return bytes(out[:end])
