from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone
from psycopg.types.json import Jsonb

from audit import services as audit
from config import publish
from moderation import callback_urls
from moderation.injection import injection_signals
from moderation.models import Case, ContentItem, Source
from policies.models import Policy, PolicyVersion

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemIn:
    external_id: str
    text: str
    transcript: list[dict[str, str]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestedItem:
    external_id: str
    item_id: int
    created: bool
    case_ids: list[int]


def transcript_render(turns: Sequence[dict[str, str]]) -> str:
    return "\n".join(f"{turn['role']}: {turn['content']}" for turn in turns)


def _item_injection_signals(item: ItemIn) -> list[str]:
    # A transcript is judged on its turns: the rendered "assistant: ..." lines are ours, not an injection.
    if item.transcript is not None:
        return injection_signals("\n".join(turn["content"] for turn in item.transcript))
    return injection_signals(item.text)


def _items_injection_signals(items: Sequence[ItemIn]) -> list[str]:
    """Each item's signals, '|'-joined (no reason has a '|'); a text sent twice in a batch is scanned once."""
    scanned: dict[tuple[str, bool], str] = {}
    out = []
    for item in items:
        key = (item.text, item.transcript is not None)
        if item.transcript is not None:
            key = ("\n".join(turn["content"] for turn in item.transcript), True)
        if key not in scanned:
            scanned[key] = "|".join(_item_injection_signals(item))
        out.append(scanned[key])
    return out


def _items_insert_new(source: Source, items: Sequence[ItemIn]) -> dict[str, int]:
    """INSERT ... ON CONFLICT DO NOTHING: returns {external_id: id} for the rows this call created.

    Under two concurrent identical requests the second waits on the unique index and inserts nothing.
    """
    if not items:
        return {}
    table = ContentItem._meta.db_table
    sql = f"""
        INSERT INTO {table}
            (source_id, external_id, text, transcript, metadata, injection_signals, received_at)
        SELECT %s, e, t, tr, m, string_to_array(s, '|'), %s
        FROM unnest(%s::text[], %s::text[], %s::jsonb[], %s::jsonb[], %s::text[]) AS u(e, t, tr, m, s)
        ON CONFLICT (source_id, external_id) DO NOTHING
        RETURNING external_id, id
    """  # noqa: S608 - the table name is ours, every value is a parameter
    params: list[Any] = [
        source.pk,
        timezone.now(),
        [i.external_id for i in items],
        [i.text for i in items],
        [Jsonb(i.transcript) if i.transcript is not None else None for i in items],
        [Jsonb(i.metadata) for i in items],
        # unnest() cannot take a ragged text[][]: the signals travel '|'-joined.
        _items_injection_signals(items),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return dict(cursor.fetchall())


def _cases_insert(source: Source, item_ids: list[int]) -> list[tuple[int, int]]:
    """One pending-triage case per (item, active policy version of the source), in one set-based INSERT
    that also finds the versions: (case id, item id), in order.

    Every column the model defaults in Python is written here (bulk_create spent more CPU building its
    SQL than anything else in the batch); nullable columns are left NULL.
    """
    if not item_ids:
        return []
    table = Case._meta.db_table
    versions = PolicyVersion._meta.db_table
    through = Source.policies.through._meta.db_table
    sql = f"""
        INSERT INTO {table} (item_id, policy_version_id, state, needs_senior, priority, verdict, confidence,
            route_reason, triage_attempts, created_at, updated_at)
        SELECT i, v.id, %s, false, 0, '', '', '', 0, %s, %s
        FROM unnest(%s::bigint[]) WITH ORDINALITY AS items(i, n)
        CROSS JOIN (
            SELECT pv.id FROM {versions} pv JOIN {through} sp ON sp.policy_id = pv.policy_id
            WHERE sp.source_id = %s AND pv.status = %s
        ) AS v
        ORDER BY n, v.id
        RETURNING id, item_id
    """  # noqa: S608 - the table names are ours, every value is a parameter
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            [Case.State.PENDING_TRIAGE, now, now, item_ids, source.pk, PolicyVersion.Status.ACTIVE],
        )
        return sorted(cursor.fetchall())


def items_stored(source: Source, external_ids: Sequence[str]) -> dict[str, int]:
    """{external_id: id} of the items this source already sent, among `external_ids` (one query)."""
    return dict(
        ContentItem.objects.filter(source=source, external_id__in=external_ids).values_list(
            "external_id", "id"
        )
    )


def items_ingest(
    *, source: Source, items: Sequence[ItemIn], stored: dict[str, int] | None = None
) -> list[IngestedItem]:
    """Store new items, open one case per active policy version, audit, and enqueue triage on commit.

    Items already received from this source (same external_id) are returned as they are. `stored` is what
    the caller already looked up with `items_stored` (the API does, to charge only new items to the
    budget): those items are neither scanned nor inserted again. Every step is one statement for the
    whole batch: the insert of new items, their cases, the lookup of items another request stored first,
    the cases of re-sent items, and the audit events.
    """
    known = dict(stored) if stored is not None else items_stored(source, [i.external_id for i in items])
    with transaction.atomic():
        created_ids = _items_insert_new(source, [i for i in items if i.external_id not in known])
        case_rows = _cases_insert(source, list(created_ids.values()))
        case_ids_by_item: dict[int, list[int]] = defaultdict(list)
        for case_id, item_id in case_rows:
            case_ids_by_item[item_id].append(case_id)

        existing_ids = {i.external_id: known[i.external_id] for i in items if i.external_id in known}
        raced = [
            i.external_id for i in items if i.external_id not in known and i.external_id not in created_ids
        ]
        if raced:  # stored by a concurrent request between the lookup and the insert
            existing_ids.update(items_stored(source, raced))
        if existing_ids:
            for item_id, case_id in (
                Case.objects.filter(item_id__in=existing_ids.values()).order_by().values_list("item_id", "id")
            ):
                case_ids_by_item[item_id].append(case_id)

        audit.record_many(
            "item.ingested",
            actor=source,
            objects=[
                (ContentItem(pk=item_id), {"external_id": ext, "case_ids": case_ids_by_item[item_id]})
                for ext, item_id in created_ids.items()
            ],
        )
        if existing_ids:
            audit.record_many(
                "item.resubmitted",
                actor=source,
                objects=[
                    (ContentItem(pk=item_id), {"external_id": ext}) for ext, item_id in existing_ids.items()
                ],
            )
        if case_rows:
            transaction.on_commit(
                partial(publish.triage_enqueue, case_ids=[case_id for case_id, _ in case_rows])
            )

    result = []
    for item in items:
        created = item.external_id in created_ids
        item_id = created_ids[item.external_id] if created else existing_ids[item.external_id]
        result.append(IngestedItem(item.external_id, item_id, created, sorted(case_ids_by_item[item_id])))
    return result


@dataclass(frozen=True)
class SourceCreated:
    source: Source
    api_key: str


@transaction.atomic
def source_create(
    *,
    name: str,
    slug: str,
    policies: Sequence[Policy] = (),
    callback_url: str = "",
    require_signature: bool = False,
    rate_limit_per_minute: int | None = None,
    actor: AbstractBaseUser | None = None,
) -> SourceCreated:
    source = Source(name=name, slug=slug, callback_url=callback_url, require_signature=require_signature)
    if rate_limit_per_minute is not None:
        source.rate_limit_per_minute = rate_limit_per_minute
    api_key = source.api_key_issue()
    source.full_clean()
    callback_urls.callback_url_validate(callback_url)
    source.save()
    source.policies.set(policies)
    audit.record(
        "source.created",
        actor=actor,
        obj=source,
        payload={
            "slug": slug,
            "policies": [p.slug for p in policies],
            "require_signature": require_signature,
        },
    )
    return SourceCreated(source=source, api_key=api_key)
