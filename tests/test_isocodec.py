"""The ISO 8583 codec against pyiso8583, configured from the same field table: messages built
by either decode identically in the other, byte for byte."""

import string

import iso8583
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onecard.core import isocodec
from onecard.protocols.iso8583_fields import FIELDS, pyiso8583_spec

SPEC = pyiso8583_spec()
HEADER = bytes.fromhex("6000030000603100000000")
PRINTABLE = string.ascii_letters + string.digits + " .-/"


def field_value(f):
    if f.kind in ("n", "z"):
        lo = f.len_max if f.len_type == 0 else 1
        digits = st.text("0123456789", min_size=lo, max_size=f.len_max)
        if f.kind == "z":
            return digits.map(lambda s: s[:-1] + "D" if len(s) > 2 else s)
        return digits
    if f.kind == "b":
        lo = f.len_max if f.len_type == 0 else 0
        return st.binary(min_size=lo, max_size=f.len_max).map(lambda b: b.hex().upper())
    lo = f.len_max if f.len_type == 0 else 0
    return st.text(PRINTABLE, min_size=lo, max_size=min(f.len_max, 60))


MESSAGE_FIELDS = [f for f in FIELDS if f.number <= 64]


@st.composite
def documents(draw):
    chosen = draw(st.lists(st.sampled_from(MESSAGE_FIELDS), min_size=1, max_size=12,
                           unique_by=lambda f: f.number))
    doc = {"h": HEADER.hex().upper(), "t": draw(st.sampled_from(["0200", "0400", "0800"]))}
    for f in chosen:
        doc[str(f.number)] = draw(field_value(f))
    return doc


def ours_from_pyiso(doc):
    out = {}
    for k, v in doc.items():
        if k in ("h", "t", "p", "1"):
            continue
        f = int(k)
        kind = next(x.kind for x in FIELDS if x.number == f)
        if kind == "b":
            out[f] = bytes.fromhex(v)
        elif kind == "z":
            out[f] = v.replace("D", "=")
        else:
            out[f] = v
    return out


@settings(max_examples=300, deadline=None)
@given(documents())
def test_pyiso8583_messages_decode_in_onecard(doc):
    raw, _ = iso8583.encode(dict(doc), SPEC)
    header, mti, fields = isocodec.decode_message(bytes(raw))
    assert header == HEADER and mti == doc["t"]
    assert fields == ours_from_pyiso(doc)


@settings(max_examples=300, deadline=None)
@given(documents())
def test_onecard_messages_decode_in_pyiso8583(doc):
    ours = isocodec.encode_message(HEADER, doc["t"], ours_from_pyiso(doc), prefix=False)
    decoded, _ = iso8583.decode(bytearray(ours), SPEC)
    for key, value in doc.items():
        assert decoded[key] == value, key
    raw, _ = iso8583.encode(dict(doc), SPEC)
    assert ours == bytes(raw)                      # same bytes, not just the same fields


def test_length_prefix():
    msg = isocodec.encode_message(HEADER, "0820", {11: "000001", 41: "T0000001"})
    assert int.from_bytes(msg[:2], "big") == len(msg) - 2


def test_odd_numeric_lengths_are_left_aligned():
    msg = isocodec.encode_message(HEADER, "0200", {22: "021", 2: "123456789012345"},
                                  prefix=False)
    # field 2: LL=15 then 8 bytes, pad nibble 0 on the right; field 22: 0x02 0x10
    assert msg[21:30] == bytes.fromhex("15123456789012345" + "0")
    assert msg[30:32] == bytes.fromhex("0210")


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda m: m[:-3], 41),                               # truncated inside field 41
    (lambda m: m[:21] + b"\x2a" + m[22:], 2),             # PAN length 2a is not BCD
    (lambda m: m[:22] + b"\xa1" + m[23:], 2),             # PAN digit a
    (lambda m: m + b"\x00", None),                        # trailing byte
])
def test_malformed_fields_are_named(mutate, field):
    msg = isocodec.encode_message(HEADER, "0200", {2: "6214831234567890", 3: "000000",
                                                   11: "000001", 41: "T0000001"}, prefix=False)
    with pytest.raises(isocodec.IsoFormatError) as err:
        isocodec.decode_message(mutate(msg))
    if field is not None:
        assert err.value.field == field


def test_field_not_in_table_is_refused():
    msg = bytearray(isocodec.encode_message(HEADER, "0800", {11: "000001"}, prefix=False))
    msg[13 + 0] |= 0x40 >> 0        # set bit 2 without a field 2: next bytes misparse
    msg[13 + 1] |= 0x01             # bit 16 (not in the table)
    with pytest.raises(isocodec.IsoFormatError):
        isocodec.decode_message(bytes(msg))


def test_encoder_rejects_values_outside_the_table():
    with pytest.raises(ValueError, match="field 3"):
        isocodec.encode_message(HEADER, "0200", {3: "12345"})
    with pytest.raises(ValueError, match="not in the field table"):
        isocodec.encode_message(HEADER, "0200", {5: "1"})
