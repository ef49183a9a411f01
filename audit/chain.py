"""The audit log's hash chain: how one event is hashed. Stable on purpose: stored hashes depend on it.

Each event hashes the canonical JSON (sorted keys, compact separators, UTF-8, UTC times to the
microsecond) of its content and of the previous event's hash, so changing, removing or reordering any
stored event breaks every link after it. Payloads are hashed as written and verified as read back from
jsonb, so they must be JSON as is: objects keyed by strings (an int key would come back as a string).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64
# pg_advisory_xact_lock key that serialises appends to the chain (any constant unique in this database).
CHAIN_LOCK_KEY = 0x5A6E_A0D1


def time_canonical(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(
    *,
    seq: int,
    created_at: datetime,
    actor_kind: str,
    actor_id: str,
    actor_label: str,
    action: str,
    object_type: str,
    object_id: str,
    payload: Any,
    prev_hash: str,
) -> str:
    content = {
        "seq": seq,
        "created_at": time_canonical(created_at),
        "actor_kind": actor_kind,
        "actor_id": actor_id,
        "actor_label": actor_label,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "payload": payload,
        "prev_hash": prev_hash,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
