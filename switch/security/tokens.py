"""Operator tokens: made here, stored only as hashes.

A token is 32 bytes from the OS's random source (base64url, 43 characters). It is stored as
its SHA-256: with 256 bits of entropy there is nothing to guess, so a slow, salted password
hash (bcrypt, scrypt) would add cost to every admin request and no protection; a leaked tokens
file gives no usable token. Comparison is over the hashes, in constant time.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_BYTES = 32
TOKEN_CHARS_MIN = 16                # a token supplied some other way must still be long
HASH_HEX_CHARS = 64


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
