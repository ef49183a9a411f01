"""Reads that may lag a little go to the read replica, when one is configured (DATABASE_REPLICA_URL).

Only what asks for it: the metrics page, the exports and the audit log page read inside `replica_reads()`
(or pass `read_alias()` to a raw cursor). Every other read, every write and every read-your-writes path
stays on the primary ("default"). Without a replica the context manager changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

REPLICA = "replica"
_replica_reads: ContextVar[bool] = ContextVar("replica_reads", default=False)


def replica_configured() -> bool:
    return REPLICA in connections.settings


def read_alias() -> str:
    """The alias reads should use here: the replica inside `replica_reads()` when there is one."""
    return REPLICA if _replica_reads.get() and replica_configured() else DEFAULT_DB_ALIAS


def replica_alias() -> str:
    """An explicit hint for a read that should use the replica (a streamed export): it, or the primary."""
    return REPLICA if replica_configured() else DEFAULT_DB_ALIAS


@contextmanager
def replica_reads() -> Iterator[str]:
    """Inside, ORM reads go to the replica if configured; yields the alias they use. Writes never do."""
    token = _replica_reads.set(True)
    try:
        yield read_alias()
    finally:
        _replica_reads.reset(token)


class ReplicaRouter:
    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        return REPLICA if _replica_reads.get() and replica_configured() else None

    def db_for_write(self, model: type[Any], **hints: Any) -> str:
        # Explicit: a row read from the replica is saved to the primary, never where it was read.
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return True  # the replica holds the primary's rows

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return db != REPLICA  # migrations run on the primary and replicate
