"""The keys of a data set: the key-encryption key (KEK) and the data key (DEK) it wraps.

KEK (32 bytes) lives outside the data directory, found in this order: ``$ONECARD_KEK`` (64 hex
digits), else the configured ``[security] kek_file``, else ``<data_dir>.kek`` beside the data
directory (the embedded default, created 0600 with the data set). Copying the data directory
alone therefore copies nothing readable.

DEK (32 bytes, random per data set) is stored in ``meta`` only wrapped: ``dek_wrapped`` is
AES-256-GCM under the KEK. ``kek_check`` (an HMAC of a constant under the KEK) tells a wrong KEK
from a damaged data set, so a wrong key stops the start with one clear line. Everything else is
under the DEK:

- AES-256-GCM (random 96-bit nonce, the item's name and row as associated data, so a sealed value
  moved to another row or column does not open): holder names and ID numbers, card numbers,
  terminal master keys, checkpoint and holder files (``sealed_files``);
- HMAC-SHA256 under a key derived with HKDF: the card-number index (``pan_hmac``), so a card is
  found without its number being stored in clear;
- a 16-byte double-length 3DES key derived with HKDF: the journal's CARD_ADMIN card numbers (a
  64-bit block fits the record's 8-byte field; ``protocols/journal.py``).

The DEK can be replaced (``onecard keys rotate-dek``, ``switch/store/rotate_dek.py``): everything
sealed under it is sealed again under a new one, and the card-number index recomputed. Journal
records are never rewritten, so the journal keys of earlier DEKs stay, each wrapped under the
KEK in ``meta`` (``journal_key_<generation>``: the first record number it enciphered and the
wrapped 16-byte key; never the earlier DEK itself), and a record's number says which one
enciphered it: the current DEK's from ``dek_from_no`` on (``dek_generation`` counts the
rotations; both absent before the first). A copy of the data set made before a rotation, with
the KEK, therefore opens nothing written after it.

One key is derived from the KEK itself rather than the DEK: the HMAC-SHA256 key of backup
manifests (``backup_mac_key``; ``switch/store/backup.py``). A backup must be checked before any of
its files is opened, so its key cannot come from the data key inside it; and it is derived
(HKDF, a label of its own), so the KEK is never used for anything but wrapping and its check.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from onecard.switch.errors import KeysError
from onecard.switch.security import modes
from onecard.switch.sql import SqlConnection

log = logging.getLogger("onecard.keystore")

ENV_KEK = "ONECARD_KEK"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SEALED_OVERHEAD_BYTES = NONCE_BYTES + TAG_BYTES
JOURNAL_KEY_BYTES = 16
KEK_SUFFIX = ".kek"
DEK_AAD = b"onecard dek v1"
JOURNAL_KEY_PREFIX = "journal_key_"     # meta: an earlier generation's journal key, wrapped
CHECK_MESSAGE = b"onecard kek check v1"
BACKUP_MAC_LABEL = b"backup manifest hmac v1"


class KekError(KeysError):
    """The data set's keys cannot be opened; the message is one line for the operator."""


def kek_path(data_dir: str | Path, configured: str | None = None) -> Path:
    """Where the KEK file is (the environment variable, when set, wins over any file)."""
    data_dir = Path(data_dir).resolve()
    path = Path(configured).resolve() if configured else data_dir.with_name(
        data_dir.name + KEK_SUFFIX)
    if path == data_dir or data_dir in path.parents:
        raise KekError(f"the key-encryption key file {path} must be outside the data "
                       f"directory {data_dir}")
    return path


def parse_kek(text: str, where: str) -> bytes:
    try:
        kek = bytes.fromhex(text.strip())
    except ValueError:
        kek = b""
    if len(kek) != KEY_BYTES:
        raise KekError(f"the key-encryption key in {where} is not {2 * KEY_BYTES} hex digits")
    return kek


def load_kek(data_dir: str | Path, configured: str | None = None) -> tuple[bytes, str]:
    """(KEK, where it came from); KekError when there is none."""
    env = os.environ.get(ENV_KEK)
    if env:
        return parse_kek(env, f"${ENV_KEK}"), f"${ENV_KEK}"
    path = kek_path(data_dir, configured)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KekError(f"no key-encryption key: {path} does not exist (set [security] kek_file "
                       f"or ${ENV_KEK})") from None
    except OSError as exc:
        raise KekError(f"cannot read the key-encryption key {path}: {exc.strerror}") from None
    return parse_kek(text, str(path)), str(path)


def create_kek(data_dir: str | Path, configured: str | None = None) -> tuple[bytes, str]:
    """The KEK for a new data set: the environment's when set, else the file's when it
    exists (several data sets may share one), else a new file (0600)."""
    try:
        return load_kek(data_dir, configured)
    except KekError:
        if os.environ.get(ENV_KEK):
            raise
    path = kek_path(data_dir, configured)
    kek = write_kek(path)
    log.warning("key-encryption key created in %s: keep it (and a copy) outside backups of "
                "the data directory; without it the data set cannot be read", path)
    return kek, str(path)


def write_kek(path: Path) -> bytes:
    """A new random KEK in a new file (0600, synced); KekError when it cannot be made."""
    kek = os.urandom(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with modes.open_private(path, "x") as f:
            f.write(kek.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise KekError(f"cannot create the key-encryption key {path}: {exc.strerror} (make "
                       "it yourself: 64 hex digits, e.g. `openssl rand -hex 32`, readable by "
                       "the switch's user)") from None
    return kek


def _check_value(kek: bytes) -> str:
    return hmac.new(kek, CHECK_MESSAGE, hashlib.sha256).hexdigest()[:32]


def _derive(dek: bytes, label: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=None, info=b"onecard " + label).derive(dek)


@dataclass(frozen=True)
class JournalGeneration:
    """An earlier DEK's journal key: it enciphered the card numbers of the records numbered
    from ``from_no`` until the next generation's ``from_no``."""

    generation: int
    from_no: int
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class DataKeys:
    """The DEK and the keys derived from it; the only holder of them in a process. With
    ``earlier``, the journal keys of the DEKs it replaced (oldest first): the current DEK's
    journal key enciphers records numbered from ``from_no`` on."""

    dek: bytes
    generation: int = 0
    from_no: int = 0
    earlier: tuple[JournalGeneration, ...] = field(default=(), repr=False)
    index_key: bytes = field(init=False, repr=False)
    journal_key: bytes = field(init=False, repr=False)
    aead: AESGCM = field(init=False, repr=False)

    def __post_init__(self) -> None:
        assert len(self.dek) == KEY_BYTES
        object.__setattr__(self, "index_key", _derive(self.dek, b"pan index", KEY_BYTES))
        object.__setattr__(self, "journal_key", _derive(self.dek, b"journal pan",
                                                        JOURNAL_KEY_BYTES))
        object.__setattr__(self, "aead", AESGCM(self.dek))

    def __repr__(self) -> str:             # never a key in a log line or a traceback
        return "DataKeys(<hidden>)"

    def seal(self, plain: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self.aead.encrypt(nonce, plain, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return self.aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise KekError(f"sealed value {aad.decode(errors='replace')} does not open: the "
                           "data set is damaged or was moved between rows") from None

    def open_into(self, blob, aad: bytes, out: memoryview) -> None:
        """open() into a buffer of exactly the plaintext's size (big files: no copies)."""
        try:
            if hasattr(self.aead, "decrypt_into"):        # cryptography 45 and later
                self.aead.decrypt_into(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad, out)
            else:
                out[:] = self.aead.decrypt(bytes(blob[:NONCE_BYTES]), bytes(blob[NONCE_BYTES:]),
                                           aad)
        except InvalidTag:
            raise KekError(f"sealed file part {aad.decode(errors='replace')} does not open: "
                           "the file is damaged or belongs elsewhere") from None

    def journal_key_at(self, no: int) -> bytes:
        """The journal key that enciphered the card numbers of journal record ``no``."""
        if no >= self.from_no:
            return self.journal_key
        for gen in reversed(self.earlier):
            if no >= gen.from_no:
                return gen.key
        raise KekError(f"journal record {no} precedes every data key of the data set "
                       "(meta journal_key_* rows are missing)")

    def pan_hmac(self, pan: int | str) -> bytes:
        """The card-number index: HMAC-SHA256 of the decimal digits."""
        return hmac.digest(self.index_key, str(int(pan)).encode(), "sha256")

    def seal_text(self, table: str, column: str, row: int | str, text: str) -> bytes:
        return self.seal(text.encode(), f"{table}.{column}:{row}".encode())

    def open_text(self, table: str, column: str, row: int | str, blob: bytes) -> str:
        return self.open(bytes(blob), f"{table}.{column}:{row}".encode()).decode()

    def wrap_tmk(self, tid: str, tmk: bytes) -> bytes:
        assert len(tmk) == 16
        return self.seal(tmk, b"terminals.tmk:" + tid.encode())

    def unwrap_tmk(self, tid: str, blob: bytes) -> bytes:
        return self.open(bytes(blob), b"terminals.tmk:" + tid.encode())


def init_data_set(conn: SqlConnection, data_dir: str | Path,
                  configured: str | None = None) -> DataKeys:
    """A new DEK for a data set that has none, wrapped under the KEK (created if missing);
    the caller commits the meta rows with the rest of its transaction."""
    kek, where = create_kek(data_dir, configured)
    dek = os.urandom(KEY_BYTES)
    write_meta(conn, {"dek_wrapped": _wrap(kek, dek, DEK_AAD), "kek_check": _check_value(kek),
                   "kek_source": where})
    return DataKeys(dek)


def write_meta(conn: SqlConnection, rows: dict[str, str]) -> None:
    """Set ``meta`` rows, in the caller's transaction (either store: the upsert both
    accept; SQLite's INSERT OR REPLACE is its own)."""
    for key, value in rows.items():
        conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                     "value = excluded.value", (key, value))


def _wrap(kek: bytes, key: bytes, aad: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    return (nonce + AESGCM(kek).encrypt(nonce, key, aad)).hex()


def _unwrap(kek: bytes, value: str, aad: bytes, row: str, data_dir: str | Path) -> bytes:
    try:
        wrapped = bytes.fromhex(value)
        return AESGCM(kek).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise KekError(f"a key of {data_dir} does not unwrap (meta {row} is damaged)") from None


def _journal_aad(generation: int, from_no: int) -> bytes:
    # The record number is bound too: a changed boundary would pick the wrong key silently.
    return f"onecard journal key v1 {generation} {from_no}".encode()


def _journal_row(kek: bytes, gen: JournalGeneration) -> tuple[str, str]:
    return (f"{JOURNAL_KEY_PREFIX}{gen.generation}",
            f"{gen.from_no}:{_wrap(kek, gen.key, _journal_aad(gen.generation, gen.from_no))}")


def _earlier(meta: dict[str, str], kek: bytes,
             data_dir: str | Path) -> tuple[JournalGeneration, ...]:
    found = []
    for row, value in meta.items():
        if not row.startswith(JOURNAL_KEY_PREFIX):
            continue
        try:
            generation = int(row[len(JOURNAL_KEY_PREFIX):])
            from_text, _, wrapped = value.partition(":")
            from_no = int(from_text)
        except ValueError:
            raise KekError(f"meta {row} of {data_dir} is damaged") from None
        key = _unwrap(kek, wrapped, _journal_aad(generation, from_no), row, data_dir)
        found.append(JournalGeneration(generation, from_no, key))
    return tuple(sorted(found, key=lambda g: g.generation))


def rotated(kek: bytes, old: DataKeys, from_no: int) -> tuple[DataKeys, dict[str, str]]:
    """A new DEK, the next generation, whose journal key enciphers the records numbered
    ``from_no`` on; and the meta rows making it the data set's, for the caller to write in
    the transaction that seals everything again under it. The old DEK's journal key is kept
    (wrapped under the KEK) for the records it enciphered, if any; the old DEK is not."""
    assert len(kek) == KEY_BYTES and from_no >= old.from_no
    dek, generation, earlier = os.urandom(KEY_BYTES), old.generation + 1, old.earlier
    rows = {"dek_wrapped": _wrap(kek, dek, DEK_AAD), "dek_generation": str(generation),
            "dek_from_no": str(from_no)}
    if from_no > old.from_no:
        kept = JournalGeneration(old.generation, old.from_no, old.journal_key)
        earlier = (*earlier, kept)
        rows.update([_journal_row(kek, kept)])
    return DataKeys(dek, generation, from_no, earlier), rows


def own_journal_meta(rows: dict[str, str]) -> dict[str, str]:
    """The meta rows of a data set copied with a new journal, numbered from 0 (a region
    split's part): the current DEK enciphers all of it, so earlier journal keys stay
    behind with the journal they belong to."""
    out = {k: v for k, v in rows.items() if not k.startswith(JOURNAL_KEY_PREFIX)}
    if "dek_from_no" in out:
        out["dek_from_no"] = "0"
    return out


def has_keys(conn: SqlConnection) -> bool:
    return conn.execute("SELECT 1 FROM meta WHERE key = 'dek_wrapped'").fetchone() is not None


def backup_mac_key(kek: bytes) -> bytes:
    """The HMAC-SHA256 key of backup manifests, derived from the KEK (never the KEK itself)."""
    return _derive(kek, BACKUP_MAC_LABEL, KEY_BYTES)


def _meta_keys(conn: SqlConnection, data_dir: str | Path) -> dict[str, str]:
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    if "dek_wrapped" not in meta:
        raise KekError(f"data set {data_dir} has no data key (an older store schema: start "
                       "the switch once to encrypt it)")
    return meta


def checked_kek(conn: SqlConnection, data_dir: str | Path,
                configured: str | None = None) -> tuple[bytes, str]:
    """(KEK, where it came from), checked to be the one the data set's key is wrapped under;
    KekError in one line when it is not."""
    return _checked_kek(_meta_keys(conn, data_dir), data_dir, configured)


def _checked_kek(meta: dict[str, str], data_dir: str | Path,
                 configured: str | None) -> tuple[bytes, str]:
    kek, where = load_kek(data_dir, configured)
    if not hmac.compare_digest(_check_value(kek), meta.get("kek_check", "")):
        raise KekError(f"the key-encryption key from {where} is not the one data set "
                       f"{data_dir} was encrypted with")
    return kek, where


def open_data_set(conn: SqlConnection, data_dir: str | Path,
                  configured: str | None = None) -> DataKeys:
    """The DEK of a data set (with the journal keys of the DEKs it replaced), unwrapped with
    the KEK; KekError in one line when it cannot."""
    meta = _meta_keys(conn, data_dir)
    kek, _where = _checked_kek(meta, data_dir, configured)
    return _open_keys(meta, kek, data_dir)


def _open_keys(meta: dict[str, str], kek: bytes, data_dir: str | Path) -> DataKeys:
    dek = _unwrap(kek, meta["dek_wrapped"], DEK_AAD, "dek_wrapped", data_dir)
    try:
        generation, from_no = int(meta.get("dek_generation", 0)), int(meta.get("dek_from_no", 0))
    except ValueError:
        raise KekError(f"meta dek_generation or dek_from_no of {data_dir} is damaged") from None
    return DataKeys(dek, generation, from_no, _earlier(meta, kek, data_dir))


def rewrap(conn: SqlConnection, data_dir: str | Path, new_kek: bytes, new_source: str,
           configured: str | None = None) -> None:
    """KEK rotation: the data key, and the journal keys of earlier data keys, unwrapped with
    the current KEK and wrapped under ``new_kek``, in one transaction (nothing else is
    encrypted under the KEK, so nothing else changes). Raises KekError if the current KEK
    does not open the data set."""
    assert len(new_kek) == KEY_BYTES
    keys = open_data_set(conn, data_dir, configured)
    rows = {"dek_wrapped": _wrap(new_kek, keys.dek, DEK_AAD),
            "kek_check": _check_value(new_kek), "kek_source": new_source}
    rows.update(_journal_row(new_kek, gen) for gen in keys.earlier)
    # Explicitly one transaction: the store's connections are in autocommit.
    conn.execute("BEGIN IMMEDIATE")
    try:
        write_meta(conn, rows)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def subkey(keys: DataKeys, label: bytes) -> bytes:
    """A 32-byte key derived from the data key for one use (HKDF with a label of its own):
    the holders file's key goes to the compiled core, which can then open nothing else."""
    return _derive(keys.dek, label, KEY_BYTES)
