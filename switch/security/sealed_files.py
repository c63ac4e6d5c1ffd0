"""Sealed files: checkpoint arrays and the holders file, AES-256-GCM under the data key.

Layout: ``MAGIC`` (8 bytes), the plaintext length (u64 LE), then chunks of at most
``CHUNK_BYTES`` plaintext, each ``nonce (12) ‖ ciphertext ‖ tag (16)``. Every chunk's associated
data names the file's label (a checkpoint's ``upto`` and array name, or ``holders``), the
plaintext length and the chunk's position, so chunks cannot be reordered, dropped, truncated
or moved to another checkpoint without failing to open. Chunking keeps each AEAD call's
buffers a few MiB however big the array (100M cards: gigabytes).

The PostgreSQL store keeps the same bytes in bytea columns: ``seal_bytes``/``open_sealed``
(and ``seal_array``/``open_array``) are the file functions without the file.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from onecard.switch.security import modes
from onecard.switch.security.keystore import NONCE_BYTES, TAG_BYTES, DataKeys, KekError

MAGIC = b"OCSEAL01"
HEADER = struct.Struct("<8sQ")
CHUNK_BYTES = 4 << 20


def is_sealed(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _aad(label: str, plain_bytes: int, index: int) -> bytes:
    return f"{label}|{plain_bytes}|{index}".encode()


def _sealed_parts(data, keys: DataKeys, label: str) -> Iterator[bytes]:
    """The header, then each chunk sealed: what a sealed file or blob holds, in order.
    ``data`` is bytes-like, or a list of them sealed as one (an .npy header and the array's
    own memory: no copy of the whole, which on this machine costs more in page faults than
    the sealing does)."""
    views = [memoryview(p).cast("B") for p in (data if isinstance(data, list) else [data])]
    plain_bytes = sum(len(v) for v in views)
    yield HEADER.pack(MAGIC, plain_bytes)
    for index, chunk in enumerate(_chunks(views, plain_bytes)):
        yield keys.seal(chunk, _aad(label, plain_bytes, index))


def _chunks(views: list[memoryview], plain_bytes: int) -> Iterator[bytes]:
    """The concatenation of ``views`` in CHUNK_BYTES pieces (one empty piece if empty)."""
    at, offset = 0, 0
    for start in range(0, max(plain_bytes, 1), CHUNK_BYTES):
        want, pieces = min(CHUNK_BYTES, plain_bytes - start), []
        while want:
            take = min(want, len(views[at]) - offset)
            pieces.append(views[at][offset:offset + take])
            want, offset = want - take, offset + take
            if offset == len(views[at]):
                at, offset = at + 1, 0
        yield b"".join(pieces) if len(pieces) != 1 else pieces[0].tobytes()


def seal_bytes(data, keys: DataKeys, label: str) -> bytes:
    """``data`` (bytes-like, or a list of them) sealed, exactly as ``write_sealed`` would
    write it to a file (the PostgreSQL store keeps such blobs in bytea columns)."""
    return b"".join(_sealed_parts(data, keys, label))


def write_sealed(path: Path, data, keys: DataKeys, label: str) -> None:
    """Write ``data`` (bytes-like) sealed to ``path`` (0600), fsynced."""
    with modes.open_private(path, "wb") as f:
        for part in _sealed_parts(data, keys, label):
            f.write(part)
        f.flush()
        os.fsync(f.fileno())


def read_sealed(path: Path, keys: DataKeys, label: str) -> bytearray:
    """The plaintext of a sealed file, in one writable buffer (decrypted in place: a restart
    of a 100M-card set reads gigabytes, so no chunk is copied more than it must be)."""
    return open_sealed(Path(path).read_bytes(), keys, label, where=str(path))


def open_sealed(raw, keys: DataKeys, label: str, *, where: str = "sealed data") -> bytearray:
    """The plaintext of sealed bytes (a file's content or a bytea value); ``where`` names
    them in the error."""
    raw = memoryview(raw).cast("B")
    if len(raw) < HEADER.size:
        raise KekError(f"{where} is not sealed (too short)")
    magic, plain_bytes = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise KekError(f"{where} is not sealed")
    out = bytearray(plain_bytes)
    view = memoryview(out)
    pos = HEADER.size
    for index, start in enumerate(range(0, max(plain_bytes, 1), CHUNK_BYTES)):
        size = min(CHUNK_BYTES, plain_bytes - start)
        end = pos + NONCE_BYTES + size + TAG_BYTES
        if end > len(raw):
            raise KekError(f"{where} is truncated")
        keys.open_into(raw[pos:end], _aad(label, plain_bytes, index), view[start:start + size])
        pos = end
    if pos != len(raw):
        raise KekError(f"{where} has trailing bytes")
    return out


def opened_chunks(raw, keys: DataKeys, label: str, *,
                  where: str = "sealed data") -> Iterator[bytes]:
    """The plaintext of sealed bytes one chunk at a time (at most CHUNK_BYTES in clear at
    once): the holders file's conversion to its block format reads an old file this way."""
    raw = memoryview(raw).cast("B")
    if len(raw) < HEADER.size or HEADER.unpack_from(raw)[0] != MAGIC:
        raise KekError(f"{where} is not sealed")
    plain_bytes = HEADER.unpack_from(raw)[1]
    pos = HEADER.size
    for index, start in enumerate(range(0, max(plain_bytes, 1), CHUNK_BYTES)):
        end = pos + NONCE_BYTES + min(CHUNK_BYTES, plain_bytes - start) + TAG_BYTES
        if end > len(raw):
            raise KekError(f"{where} is truncated")
        yield keys.open(bytes(raw[pos:end]), _aad(label, plain_bytes, index))
        pos = end
    if pos != len(raw):
        raise KekError(f"{where} has trailing bytes")


def array_bytes(arr: np.ndarray) -> list:
    """The .npy image of ``arr`` as [header, the array's bytes] (no copy of the array).
    Not np.lib.format.write_array: it copies a structured array into a stream through a
    buffered iterator, field by field (200 ms for a 91 MiB horizon segment)."""
    arr = np.ascontiguousarray(arr)
    assert not arr.dtype.hasobject, "checkpoints hold plain arrays"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(arr))
    return [header.getvalue(), arr.reshape(-1).view(np.uint8)]


def array_from(buf: bytearray) -> np.ndarray:
    """An .npy image as an array over the buffer itself (writable, no copy)."""
    f = io.BytesIO(buf)
    version = np.lib.format.read_magic(f)
    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = header(f)
    assert not fortran, "checkpoints are written C-contiguous"
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(buf, dtype=dtype, count=count, offset=f.tell()).reshape(shape)


def write_array(path: Path, arr: np.ndarray, keys: DataKeys, label: str) -> None:
    write_sealed(path, array_bytes(arr), keys, label)


def read_array(path: Path, keys: DataKeys, label: str) -> np.ndarray:
    return array_from(read_sealed(path, keys, label))


def seal_array(arr: np.ndarray, keys: DataKeys, label: str) -> bytes:
    """An array sealed, byte for byte what ``write_array`` writes to its file."""
    return seal_bytes(array_bytes(arr), keys, label)


def open_array(raw, keys: DataKeys, label: str, *, where: str = "sealed array") -> np.ndarray:
    return array_from(open_sealed(raw, keys, label, where=where))
