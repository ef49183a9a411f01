"""Writing the audit log. Every write path in the product records its events through here.

Events form a hash chain (audit/chain.py). Appends are serialised by a transaction-scoped advisory
lock taken inside the caller's transaction: the writer reads the chain's head under the lock, so the
next writer waits until this transaction commits (or rolls back, leaving no gap) and then links to it.
One lock, one head read and one INSERT per call, whatever the number of events.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connection, models, transaction
from django.utils import timezone
from psycopg.types.json import Jsonb

from audit import chain
from audit.models import ArchivedPartition, AuditEvent


class SourceActor(Protocol):
    """A platform acting through its API key (moderation.Source): audited by its slug."""

    pk: Any
    slug: str


Actor = AbstractBaseUser | SourceActor | None


def _actor_fields(actor: Actor) -> dict[str, str]:
    if actor is None:
        return {"actor_kind": AuditEvent.ActorKind.SYSTEM, "actor_id": "", "actor_label": "system"}
    if isinstance(actor, AbstractBaseUser):
        return {
            "actor_kind": AuditEvent.ActorKind.USER,
            "actor_id": str(actor.pk),
            "actor_label": actor.get_username(),
        }
    return {"actor_kind": AuditEvent.ActorKind.SOURCE, "actor_id": str(actor.pk), "actor_label": actor.slug}


def object_type_of(obj: models.Model) -> str:
    """How audit events name a model: its label, or the label it had before it moved to another app."""
    return getattr(type(obj), "audit_object_type", obj._meta.label_lower)


def _append(events: list[AuditEvent]) -> list[AuditEvent]:
    """Link the events to the chain's head and insert them, in the caller's transaction."""
    if not events:
        return []
    with transaction.atomic(savepoint=False):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [chain.CHAIN_LOCK_KEY])
            # A new statement after the lock: its snapshot sees the head the previous holder committed. One
            # probe of each month's seq index (a merge of the partitions' top rows), never a scan.
            cursor.execute("SELECT seq, hash, created_at FROM reviews_auditevent ORDER BY seq DESC LIMIT 1")
            head = cursor.fetchone() or _archived_head()
        seq, prev_hash = (head[0], head[1]) if head else (0, chain.GENESIS_HASH)
        # Never before the head, whatever this host's clock says: the log is partitioned by month of
        # created_at, and a month must hold one unbroken stretch of the chain to be archived on its own.
        now = max(timezone.now(), head[2]) if head else timezone.now()
        for event in events:
            seq += 1
            event.seq = seq
            event.created_at = now
            event.prev_hash = prev_hash
            event.hash = prev_hash = chain.event_hash(
                seq=seq,
                created_at=now,
                actor_kind=event.actor_kind,
                actor_id=event.actor_id,
                actor_label=event.actor_label,
                action=event.action,
                object_type=event.object_type,
                object_id=event.object_id,
                payload=event.payload,
                prev_hash=event.prev_hash,
            )
        _events_insert(events)
        return events


@dataclass(frozen=True)
class Anchor:
    """The last archived stretch of the chain: the events up to `last_seq` are in `file`."""

    last_seq: int
    last_hash: str
    archived_before: datetime
    file: str
    sha256: str
    event_seq: int


def _archived_head() -> tuple[int, str, datetime] | None:
    """Where the chain goes on when every remaining month has been archived (an empty log after detaching)."""
    anchor = chain_anchor()
    return (anchor.last_seq, anchor.last_hash, anchor.archived_before) if anchor is not None else None


def chain_anchor() -> Anchor | None:
    row = (
        ArchivedPartition.objects.filter(table=AuditEvent._meta.db_table, last_seq__isnull=False)
        .order_by("-last_seq")
        .values_list("last_seq", "last_hash", "range_end", "file", "sha256", "event_seq")
        .first()
    )
    if row is None:
        return None
    last_seq, last_hash, archived_before, file, sha256, event_seq = row
    assert last_seq is not None  # filtered above; for the type checker
    return Anchor(last_seq, last_hash, archived_before, file, sha256, event_seq)


def _events_insert(events: list[AuditEvent]) -> None:
    # One set-based INSERT over arrays: bulk_create spent more CPU building SQL per field than the rest.
    table = AuditEvent._meta.db_table
    sql = f"""
        INSERT INTO {table} (seq, created_at, actor_kind, actor_id, actor_label, action, object_type,
            object_id, payload, prev_hash, hash)
        SELECT q, %s, ak, ai, al, a, t, o, p, ph, h
        FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
            %s::jsonb[], %s::text[], %s::text[])
            AS u(q, ak, ai, al, a, t, o, p, ph, h)
        RETURNING seq, id
    """  # noqa: S608 - the table name is ours, every value is a parameter
    # One append has one time (_append).
    params: list[Any] = [
        events[0].created_at,
        [e.seq for e in events],
        [e.actor_kind for e in events],
        [e.actor_id for e in events],
        [e.actor_label for e in events],
        [e.action for e in events],
        [e.object_type for e in events],
        [e.object_id for e in events],
        [Jsonb(e.payload) for e in events],
        [e.prev_hash for e in events],
        [e.hash for e in events],
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        ids = dict(cursor.fetchall())
    for event in events:
        event.pk = ids[event.seq]
        event._state.adding = False
        event._state.db = connection.alias


def record(
    action: str, *, actor: Actor, obj: models.Model, payload: dict[str, Any] | None = None
) -> AuditEvent:
    return record_about(
        action, actor=actor, object_type=object_type_of(obj), object_id=str(obj.pk), payload=payload
    )


def record_about(
    action: str,
    *,
    actor: Actor,
    object_type: str,
    object_id: str,
    payload: dict[str, Any] | None = None,
    actor_label: str = "",
) -> AuditEvent:
    """An event about something that is not a saved row (an export, a username that failed to log in)."""
    fields = _actor_fields(actor)
    if actor_label:
        fields["actor_label"] = actor_label
    event = AuditEvent(
        action=action, object_type=object_type, object_id=object_id[:64], payload=payload or {}, **fields
    )
    return _append([event])[0]


def record_many(
    action: str, *, actor: Actor, objects: Iterable[tuple[models.Model, dict[str, Any]]]
) -> list[AuditEvent]:
    """One event per (object, payload), in a single INSERT."""
    actor_fields = _actor_fields(actor)
    return _append(
        [
            AuditEvent(
                action=action,
                object_type=object_type_of(obj),
                object_id=str(obj.pk),
                payload=payload,
                **actor_fields,
            )
            for obj, payload in objects
        ]
    )


@dataclass(frozen=True)
class EventIn:
    """An event to record with others in one append (record_all)."""

    action: str
    actor: Actor
    obj: models.Model
    payload: dict[str, Any]


def record_all(events: Sequence[EventIn]) -> list[AuditEvent]:
    """Events of any actions and actors, in this order, in one append (one lock, one head read, one INSERT):
    what one user action did, recorded at the end of its transaction."""
    return _append(
        [
            AuditEvent(
                action=e.action,
                object_type=object_type_of(e.obj),
                object_id=str(e.obj.pk),
                payload=e.payload,
                **_actor_fields(e.actor),
            )
            for e in events
        ]
    )


@dataclass(frozen=True)
class ChainBreak:
    event_id: int
    seq: int
    problem: str


@dataclass(frozen=True)
class ChainReport:
    verified: int
    head_seq: int
    head_hash: str
    broken: ChainBreak | None
    # Verification started after this archived stretch (events up to its last_seq are in its file).
    anchor: Anchor | None = None

    @property
    def archived_note(self) -> str:
        if self.anchor is None:
            return ""
        return (
            f"events before seq {self.anchor.last_seq + 1} were archived (the last of them in "
            f"{self.anchor.file}, sha256 {self.anchor.sha256}); verification started from that anchor "
            f"(seq {self.anchor.last_seq}, hash {self.anchor.last_hash})"
        )


VERIFY_FIELDS = (
    "id",
    "seq",
    "created_at",
    "actor_kind",
    "actor_id",
    "actor_label",
    "action",
    "object_type",
    "object_id",
    "payload",
    "prev_hash",
    "hash",
)


HASHED_FIELDS = tuple(f for f in VERIFY_FIELDS if f not in {"id", "hash"})


def _events_in_chain_order(*, after_seq: int, up_to_seq: int | None) -> Iterator[tuple[Any, ...]]:
    # A server-side cursor in a transaction (not WITH HOLD): memory stays flat however long the log.
    events = AuditEvent.objects.filter(seq__gt=after_seq)
    if up_to_seq is not None:
        events = events.filter(seq__lte=up_to_seq)
    with transaction.atomic():
        yield from events.order_by("seq").values_list(*VERIFY_FIELDS).iterator(chunk_size=5000)


def chain_verify() -> ChainReport:
    """Walk the chain in order; stop at the first event whose position, link or content hash is wrong.

    Archived months are not in the table any more: the walk starts from the last archived event's seq and
    hash (the anchor), which the history.partition_archived event in the chain itself also carries."""
    anchor = chain_anchor()
    if anchor is None:
        return chain_verify_range(after_seq=0, after_hash=chain.GENESIS_HASH)
    report = chain_verify_range(after_seq=anchor.last_seq, after_hash=anchor.last_hash)
    broken = report.broken
    recorded = AuditEvent.objects.filter(seq=anchor.event_seq).values_list("id", "payload").first()
    if broken is None and recorded is not None:
        event_id, manifest = recorded
        if (manifest.get("last_seq"), manifest.get("last_hash")) != (anchor.last_seq, anchor.last_hash):
            problem = (
                f"the archive anchor (seq {anchor.last_seq}, hash {anchor.last_hash}) differs from the one "
                f"its archive event recorded (anchor altered)"
            )
            broken = ChainBreak(event_id, anchor.event_seq, problem)
    return ChainReport(report.verified, report.head_seq, report.head_hash, broken, anchor)


def chain_verify_range(*, after_seq: int, after_hash: str, up_to_seq: int | None = None) -> ChainReport:
    """The chain from the event after `after_seq` (which hashed to `after_hash`), up to `up_to_seq`."""
    expected_seq, prev_hash, verified = after_seq + 1, after_hash, 0
    for row in _events_in_chain_order(after_seq=after_seq, up_to_seq=up_to_seq):
        event_id, seq, created_at, kind, actor_id, label, action, otype, oid, payload, stored_prev, stored = (
            row
        )
        problem = ""
        if seq != expected_seq:
            problem = f"sequence gap: expected seq {expected_seq}, found {seq} (events removed?)"
        elif stored_prev != prev_hash:
            problem = (
                f"prev link differs: prev_hash {stored_prev} but event seq {seq - 1} hashes to {prev_hash}"
            )
        else:
            computed = chain.event_hash(
                seq=seq,
                created_at=created_at,
                actor_kind=kind,
                actor_id=actor_id,
                actor_label=label,
                action=action,
                object_type=otype,
                object_id=oid,
                payload=payload,
                prev_hash=stored_prev,
            )
            if computed != stored:
                problem = (
                    f"content hash differs: stored {stored}, content hashes to {computed} (event altered)"
                )
        if problem:
            return ChainReport(verified, expected_seq - 1, prev_hash, ChainBreak(event_id, seq, problem))
        verified += 1
        expected_seq, prev_hash = seq + 1, stored
    return ChainReport(verified, expected_seq - 1, prev_hash, None)


@dataclass(frozen=True)
class PageCheck:
    """What one page of the log proves on its own: each event's content hash, and the links between
    consecutive events on it. The whole chain is `manage.py verify_audit_log`."""

    checked: int
    broken: ChainBreak | None


def events_check(events: Sequence[AuditEvent]) -> PageCheck:
    by_seq = {e.seq: e for e in events}
    for event in sorted(events, key=lambda e: e.seq):
        computed = chain.event_hash(**{field: getattr(event, field) for field in HASHED_FIELDS})
        problem = ""
        if computed != event.hash:
            problem = "its content does not match its hash (event altered)"
        elif (previous := by_seq.get(event.seq - 1)) is not None and event.prev_hash != previous.hash:
            problem = f"it does not link to event {event.seq - 1} (events altered or replaced)"
        if problem:
            return PageCheck(len(events), ChainBreak(event.pk, event.seq, problem))
    return PageCheck(len(events), None)
