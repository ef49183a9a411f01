from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone
from psycopg.types.json import Jsonb

from inference_worker.policy_rules import policy_rule_ids_parse
from inference_worker.prompts import token_count
from moderation.injection import injection_signals
from moderation.models import Case, ContentItem, Policy, PolicyVersion, Source
from reviews import audit

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


def _items_insert_new(source: Source, items: Sequence[ItemIn]) -> dict[str, int]:
    """INSERT ... ON CONFLICT DO NOTHING: returns {external_id: id} for the rows this call created.

    Under two concurrent identical requests the second waits on the unique index and inserts nothing.
    """
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
        # unnest() cannot take a ragged text[][]: the signals travel '|'-joined (no reason contains '|').
        ["|".join(_item_injection_signals(i)) for i in items],
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return dict(cursor.fetchall())


def items_ingest(*, source: Source, items: Sequence[ItemIn]) -> list[IngestedItem]:
    """Store new items, open one case per active policy version, audit, and enqueue triage on commit.

    Items already received from this source (same external_id) are returned as they are.
    """
    from inference_worker import tasks

    with transaction.atomic():
        created_ids = _items_insert_new(source, items)
        versions = list(
            PolicyVersion.objects.filter(policy__sources=source, status=PolicyVersion.Status.ACTIVE).only(
                "id"
            )
        )
        cases = Case.objects.bulk_create(
            [Case(item_id=item_id, policy_version=v) for item_id in created_ids.values() for v in versions]
        )
        case_ids_by_item: dict[int, list[int]] = defaultdict(list)
        for case in cases:
            case_ids_by_item[case.item_id].append(case.pk)

        existing_ids: dict[str, int] = {}
        if len(created_ids) < len(items):
            wanted = [i.external_id for i in items if i.external_id not in created_ids]
            existing_ids = dict(
                ContentItem.objects.filter(source=source, external_id__in=wanted).values_list(
                    "external_id", "id"
                )
            )
            for item_id, case_id in Case.objects.filter(item_id__in=existing_ids.values()).values_list(
                "item_id", "id"
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
        if cases:
            transaction.on_commit(partial(tasks.triage_enqueue, case_ids=[c.pk for c in cases]))

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


def policy_text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@transaction.atomic
def policy_version_create(
    *, policy: Policy, text: str, author: User | None = None, activate: bool = False
) -> PolicyVersion:
    """A new immutable version; with activate=True it replaces the active one (new cases only)."""
    Policy.objects.select_for_update().get(pk=policy.pk)  # serialise version numbering per policy
    number = (policy.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = PolicyVersion.objects.create(
        policy=policy,
        number=number,
        text=text,
        rule_ids=policy_rule_ids_parse(text),
        token_count=token_count(text),
        content_hash=policy_text_hash(text),
        author=author if author is not None and author.pk else None,
    )
    audit.record(
        "policy.version_created",
        actor=author,
        obj=version,
        payload={"policy": policy.slug, "number": number, "rule_ids": version.rule_ids},
    )
    if activate:
        policy.versions.filter(status=PolicyVersion.Status.ACTIVE).update(status=PolicyVersion.Status.RETIRED)
        version.status = PolicyVersion.Status.ACTIVE
        version.activated_at = timezone.now()
        version.save(update_fields=["status", "activated_at"])
        audit.record("policy.version_activated", actor=author, obj=version, payload={"policy": policy.slug})
    return version
