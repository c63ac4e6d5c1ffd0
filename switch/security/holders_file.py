"""The holders file (``holders.bin``): every account's full name and identity number, sealed
at rest in blocks and opened one block at a time when a lodging terminal verifies a card
(``core/holders.pyx``), never all at start.

Format ``OCHOLD01``: a 64-byte header (magic, record size 48, records per block K, record
count n, a random 16-byte file id, zeros), then ceil(n / K) blocks at a fixed stride, block i
at ``64 + i * (28 + 48 K)``: ``nonce (12) ‖ AES-256-GCM ciphertext of K records ‖ tag (16)``,
the last block holding what is left. Each block's associated data is the whole header and the
block's index: a block moved, swapped with another file's block or cut short does not open,
and neither does any block once the header is changed. The key is derived from the data key
for this file alone (``keystore.subkey``): the compiled core holds that key and no other.

K = 4 (192 bytes of records a block), measured (``bench.holders``, bench/README.md "Holder
records at rest and on read"): opening a block costs about the same 0.8 us from one record to
four (the pread and the GCM call's fixed cost dominate; 1.06 us at 16, 1.7 at 64, 4.5 at 256),
and there is no locality between accounts for bigger blocks to cache. Four records a block make
the file 55 bytes a record (one a block: 76, a record's nonce and tag; sixteen: 49.75), and a
verification opens its holder and three others, not fifteen.

Older data sets hold ``holders.bin`` in clear (before store schema 4) or sealed whole
(``sealed_files``, ``OCSEAL01``): ``upgrade`` rewrites either in this format without holding
more than a 4 MiB chunk in clear (every SQLite start runs it, as the checkpoints' sealing);
the PostgreSQL store's copy is converted when it is read (``vault_of_bytes``).
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from onecard.core.holders import BLOCK_RECORDS_MAX, HEADER_BYTES, RECORD_BYTES, HolderVault
from onecard.core.holders import seal_blocks as _seal_blocks
from onecard.switch import logs
from onecard.switch.security import keystore, modes, sealed_files
from onecard.switch.security.keystore import DataKeys, KekError

log = logging.getLogger("onecard.holders")

MAGIC = b"OCHOLD01"
HEADER = struct.Struct("<8sIIQ16s24x")
assert HEADER.size == HEADER_BYTES
BLOCK_RECORDS = 4
SEAL_OVERHEAD_BYTES = 28
# What a switch keeps decrypted at most ([core] holder_cache_bytes): 1 MiB is 5,460 blocks,
# 21,840 holders in clear, whatever the number of cards.
CACHE_BYTES_DEFAULT = 1 << 20
KEY_LABEL = b"holders file v1"
OLD_LABEL = "holders"          # the associated data's label of the whole-file format
_CHUNK_RECORDS = 1 << 16       # records sealed per call: 3 MiB in clear


class HoldersFileError(KekError):
    """A holders file that is not what this build reads or writes (one line, no record)."""


def holders_key(keys: DataKeys) -> bytes:
    return keystore.subkey(keys, KEY_LABEL)


def is_sealed(path: Path) -> bool:
    """Sealed in either format (this one, or the whole-file format it replaces)."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) in (MAGIC, sealed_files.MAGIC)


def is_current(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def sealed_bytes(n_records: int, block_records: int = BLOCK_RECORDS) -> int:
    blocks = -(-n_records // block_records)
    return HEADER_BYTES + n_records * RECORD_BYTES + blocks * SEAL_OVERHEAD_BYTES


def parse_header(raw: bytes, size_bytes: int, where: str) -> tuple[int, int]:
    """(records, records per block) of a file of ``size_bytes`` starting with ``raw``."""
    if len(raw) < HEADER_BYTES or raw[:len(MAGIC)] != MAGIC:
        raise HoldersFileError(f"{where} is not a holders file of this format")
    _, record_bytes, block_records, n_records, _ = HEADER.unpack_from(raw)
    if record_bytes != RECORD_BYTES or not 0 < block_records <= BLOCK_RECORDS_MAX:
        raise HoldersFileError(f"{where}: records of {record_bytes} bytes, {block_records} "
                               f"to a block (this build reads {RECORD_BYTES}-byte records)")
    if size_bytes != sealed_bytes(n_records, block_records):
        raise HoldersFileError(f"{where} is {size_bytes:,} bytes where {n_records:,} records "
                               f"make {sealed_bytes(n_records, block_records):,}: truncated or "
                               "extended")
    return n_records, block_records


def _seal_stream(out: IO[bytes], chunks: Iterable, n_records: int, keys: DataKeys,
                 block_records: int) -> None:
    """Header and blocks of ``n_records`` records given as ``chunks`` (bytes-like pieces of
    whole or partial records, in order) written to ``out``, sealed a few MiB at a time."""
    header = HEADER.pack(MAGIC, RECORD_BYTES, block_records, n_records, os.urandom(16))
    key, block, pending = holders_key(keys), 0, bytearray()
    step = _CHUNK_RECORDS // block_records * block_records * RECORD_BYTES
    out.write(header)

    def seal(plain) -> None:
        nonlocal block
        out.write(_seal_blocks(key, header, plain, block, block_records))
        block += -(-len(plain) // (RECORD_BYTES * block_records))

    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        if pending:                     # a piece left over: completed first
            take = min(step - len(pending), len(view))
            pending += view[:take]
            view = view[take:]
            if len(pending) == step:
                seal(bytes(pending))
                pending.clear()
        while len(view) >= step:
            seal(view[:step])
            view = view[step:]
        pending += view
    written = block * block_records + len(pending) // RECORD_BYTES
    if written != n_records or len(pending) % RECORD_BYTES:
        raise HoldersFileError(f"holders: {n_records:,} records announced, "
                               f"{written:,} given (and {len(pending) % RECORD_BYTES} bytes)")
    if pending:
        seal(bytes(pending))
        pending[:] = bytes(len(pending))        # the last clear records, wiped


def write(path: Path, chunks: Iterable, n_records: int, keys: DataKeys, *,
          block_records: int = BLOCK_RECORDS) -> None:
    """Write ``n_records`` records (``chunks``: bytes-like, in order) sealed to ``path``,
    0600, fsynced and replaced whole (a reader sees the old file or the new one)."""
    path = Path(path)
    tmp = path.with_suffix(".sealing")
    with modes.open_private(tmp, "wb") as f:
        _seal_stream(f, chunks, n_records, keys, block_records)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def write_records(path: Path, data, keys: DataKeys) -> None:
    """``data``: every account's record, one buffer (the demo generator's)."""
    view = memoryview(data).cast("B")
    write(path, [view], len(view) // RECORD_BYTES, keys)


def _old_records(raw, keys: DataKeys, where: str) -> tuple[int, Iterator[bytes]]:
    """Record count and plaintext chunks of a holders file in an older format: sealed whole
    (``OCSEAL01``) or clear (before the data set was encrypted)."""
    if bytes(raw[:len(sealed_files.MAGIC)]) == sealed_files.MAGIC:
        plain_bytes = sealed_files.HEADER.unpack_from(raw)[1]
        chunks: Iterator[bytes] = sealed_files.opened_chunks(raw, keys, OLD_LABEL, where=where)
    else:
        plain_bytes = len(raw)
        chunks = (bytes(raw[i:i + sealed_files.CHUNK_BYTES])
                  for i in range(0, len(raw), sealed_files.CHUNK_BYTES))
    if plain_bytes % RECORD_BYTES:
        raise HoldersFileError(f"{where}: {plain_bytes:,} bytes is not a whole number of "
                               f"{RECORD_BYTES}-byte records")
    return plain_bytes // RECORD_BYTES, chunks


def upgrade(path: Path, keys: DataKeys) -> bool:
    """Rewrite a holders file of an older format (clear, or sealed whole) in this one; False
    when it already is (or there is none). Idempotent: a crash leaves the old file whole."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0 or is_current(path):
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as raw:
        n_records, chunks = _old_records(raw, keys, str(path))
        write(path, chunks, n_records, keys)
    return True


def _checked(vault: HolderVault, where: str) -> HolderVault:
    """A wrong key or a changed header shows at start, in one line, not as 96 later."""
    if vault.n_records and not vault.check_block(0):
        raise HoldersFileError(f"{where}: its first block does not open (another data "
                               "set's file, a changed header, or damage)")
    return vault


def open_vault(path: Path, keys: DataKeys, cache_bytes: int = CACHE_BYTES_DEFAULT,
               *, where: str | None = None) -> HolderVault:
    """The vault over a holders file of this format: nothing decrypted yet."""
    where = where or str(path)
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
        n_records, block_records = parse_header(header, os.fstat(f.fileno()).st_size, where)
        vault = HolderVault(f.fileno(), holders_key(keys), header, n_records, block_records,
                            HEADER_BYTES, cache_bytes)
    return _checked(vault, where)


def vault_of_bytes(raw: bytes, keys: DataKeys, cache_bytes: int = CACHE_BYTES_DEFAULT, *,
                   where: str) -> HolderVault:
    """A vault over a holders file held as bytes (the PostgreSQL store's ``files`` row): the
    sealed bytes go to an unnamed temporary file (sealed, so nothing is in clear on disk)
    and the vault reads it by offset, as a data directory's file. An older format is
    converted on the way."""
    with tempfile.TemporaryFile() as f:
        if bytes(raw[:len(MAGIC)]) == MAGIC:
            f.write(raw)
        elif bytes(raw[:len(sealed_files.MAGIC)]) == sealed_files.MAGIC:
            n_records, chunks = _old_records(memoryview(raw), keys, where)
            _seal_stream(f, chunks, n_records, keys, BLOCK_RECORDS)
        else:
            raise HoldersFileError(f"{where} is not sealed")
        f.flush()
        f.seek(0)
        header = f.read(HEADER_BYTES)
        n_records, block_records = parse_header(header, os.fstat(f.fileno()).st_size, where)
        vault = HolderVault(f.fileno(), holders_key(keys), header, n_records, block_records,
                            HEADER_BYTES, cache_bytes)
    return _checked(vault, where)


def reseal(path: Path, vault: HolderVault, keys: DataKeys, accounts=None) -> None:
    """Write the records ``vault`` opens (all, or those of ``accounts`` in that order: a
    region split) to ``path`` under ``keys``, a chunk at a time (data-key rotation, split)."""
    import numpy as np

    order = (np.arange(vault.n_records, dtype=np.uint32) if accounts is None
             else np.ascontiguousarray(accounts, dtype=np.uint32))
    chunks = (vault.read_many(order[i:i + _CHUNK_RECORDS])
              for i in range(0, len(order), _CHUNK_RECORDS))
    write(path, chunks, len(order), keys)


class FailureWatch:
    """Logs the verifications a vault refused since the last check (one error line a check
    at most: a count, the last block and why, never a record); the server checks each
    second, and /metrics counts them (onecard_holder_lookups{result="refused"})."""

    def __init__(self, vault: HolderVault | None) -> None:
        self.vault = vault
        self.seen = 0

    def check(self) -> None:
        if self.vault is None or self.vault.failures == self.seen:
            return
        new, self.seen = self.vault.failures - self.seen, self.vault.failures
        log.error("%d holder record(s) refused (verifications answered 96): %s", new,
                  self.vault.describe_failure(),
                  extra=logs.extra("holder_refused", count=new,
                                   block=self.vault.last_failed_block))
