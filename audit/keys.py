"""Prefixed secrets (`<prefix>_<key id>_<random>`): sources' API keys and people's API tokens.

Only a hash is stored; the key id finds the row without comparing hashes over a table. Keys are 256-bit random
strings, so a fast hash is enough (there is no dictionary to brute-force them from).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    key: str  # shown once, never stored
    key_hash: str


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_issue(prefix: str) -> IssuedKey:
    key_id = secrets.token_hex(6)
    key = f"{prefix}_{key_id}_{secrets.token_urlsafe(32)}"
    return IssuedKey(key_id=key_id, key=key, key_hash=key_hash(key))


def key_matches(stored_hash: str, key: str) -> bool:
    return hmac.compare_digest(stored_hash, key_hash(key))


def key_id_of(prefix: str, key: str) -> str | None:
    """The key id of a well-formed key with this prefix, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != prefix:
        return None
    return parts[1]
