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
from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.utils import timezone
from psycopg.types.json import Jsonb

from inference_worker.policy_rules import policy_rule_ids_parse
from inference_worker.prompts import token_count
from moderation.injection import injection_signals
from moderation.models import Case, ContentItem, Policy, PolicyVersion, Source
from reviews import audit, callbacks

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
    from inference_worker import tasks

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
                partial(tasks.triage_enqueue, case_ids=[case_id for case_id, _ in case_rows])
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
    callbacks.callback_url_validate(callback_url)
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


POLICY_TEXT_MAX_CHARS = 50_000


class PolicyVersionRefused(Exception):
    """Not allowed on this version (published text, gate closed, missing override reason)."""


def _policy_text_fields(text: str) -> dict[str, Any]:
    return {
        "text": text,
        "rule_ids": policy_rule_ids_parse(text),
        "token_count": token_count(text),
        "content_hash": policy_text_hash(text),
    }


def _policy_text_check(text: str) -> None:
    if not text.strip():
        raise PolicyVersionRefused("the policy text is empty")
    if len(text) > POLICY_TEXT_MAX_CHARS:
        raise PolicyVersionRefused(f"the policy text is longer than {POLICY_TEXT_MAX_CHARS} characters")


def _version_number_next(policy: Policy) -> int:
    Policy.objects.select_for_update().get(pk=policy.pk)  # serialise version numbering per policy
    return (policy.versions.aggregate(n=Max("number"))["n"] or 0) + 1


@transaction.atomic
def policy_version_create(
    *, policy: Policy, text: str, author: User | None = None, activate: bool = False
) -> PolicyVersion:
    """A new published (immutable) version; with activate=True it replaces the active one (new cases only).

    Ungated: for seeding and set-up. Policy editors go through drafts and ``policy_version_activate``.
    """
    number = _version_number_next(policy)
    version = PolicyVersion.objects.create(
        policy=policy,
        number=number,
        status=PolicyVersion.Status.PUBLISHED,
        published_at=timezone.now(),
        author=author if author is not None and author.pk else None,
        **_policy_text_fields(text),
    )
    audit.record(
        "policy.version_created",
        actor=author,
        obj=version,
        payload={"policy": policy.slug, "number": number, "rule_ids": version.rule_ids},
    )
    if activate:
        _version_make_active(version)
        audit.record("policy.version_activated", actor=author, obj=version, payload={"policy": policy.slug})
    return version


def _version_make_active(version: PolicyVersion) -> None:
    version.policy.versions.filter(status=PolicyVersion.Status.ACTIVE).update(
        status=PolicyVersion.Status.RETIRED
    )
    version.status = PolicyVersion.Status.ACTIVE
    version.activated_at = timezone.now()
    version.save(update_fields=["status", "activated_at"])


@transaction.atomic
def policy_draft_create(*, policy: Policy, author: User, text: str | None = None) -> PolicyVersion:
    """A new draft: ``text``, else a copy of the active version (else of the latest one)."""
    if text is None:
        base = (
            policy.versions.filter(status=PolicyVersion.Status.ACTIVE).first()
            or policy.versions.order_by("-number").first()
        )
        text = base.text if base is not None else f"# {policy.name}\n\n## Instructions\n"
    _policy_text_check(text)
    number = _version_number_next(policy)
    version = PolicyVersion.objects.create(
        policy=policy, number=number, author=author, **_policy_text_fields(text)
    )
    audit.record(
        "policy.draft_created",
        actor=author,
        obj=version,
        payload={"policy": policy.slug, "number": number, "content_hash": version.content_hash},
    )
    return version


class PolicyRefused(Exception):
    """The policy cannot be created or changed as asked (e.g. its slug is taken)."""


def policy_create(*, name: str, slug: str, description: str, text: str, author: User) -> PolicyVersion:
    """A new policy and its first draft (v1). Sources send it content once they are linked to it."""
    try:
        with transaction.atomic():
            policy = Policy.objects.create(name=name, slug=slug, description=description)
            audit.record("policy.created", actor=author, obj=policy, payload={"slug": slug, "name": name})
            return policy_draft_create(policy=policy, author=author, text=text)
    except IntegrityError as exc:
        raise PolicyRefused(f"a policy with the slug {slug!r} already exists") from exc


# What the policy team may change on a policy (not its text: that is versioned).
POLICY_SETTINGS = (
    "name",
    "description",
    "auto_action_violations",
    "auto_clear_min_confidence",
    "escalate_below_confidence",
    "qa_sample_rate",
    "activation_tolerance",
    "funnel_target_recall",
    "recall_confidence",
    "funnel_auto_clear",
    "reasoner_auto_clear",
    "rules_required",
)


@transaction.atomic
def policy_settings_update(
    *, policy: Policy, actor: User, settings: dict[str, Any], sources: Sequence[Source]
) -> list[str]:
    """Apply routing and gate settings and the linked sources; audit what changed. New triage uses them at
    once; cases already judged keep their route. Returns the names of the changed settings."""
    locked = Policy.objects.select_for_update().get(pk=policy.pk)
    changes: dict[str, list[Any]] = {}
    for name in POLICY_SETTINGS:
        if name in settings and getattr(locked, name) != settings[name]:
            changes[name] = [getattr(locked, name), settings[name]]
            setattr(locked, name, settings[name])
    if changes:
        locked.save(update_fields=list(changes))
    before = sorted(locked.sources.values_list("slug", flat=True))
    after = sorted(s.slug for s in sources)
    if before != after:
        locked.sources.set(sources)
        changes["sources"] = [before, after]
    if changes:
        audit.record("policy.settings_changed", actor=actor, obj=locked, payload={"changes": changes})
    policy.refresh_from_db()
    return list(changes)


@transaction.atomic
def policy_draft_update(*, version: PolicyVersion, text: str, author: User) -> PolicyVersion:
    locked = PolicyVersion.objects.select_for_update().select_related("policy").get(pk=version.pk)
    if not locked.is_draft:
        raise PolicyVersionRefused(f"v{locked.number} is published and cannot change: start a new draft")
    _policy_text_check(text)
    before = locked.content_hash
    for name, value in _policy_text_fields(text).items():
        setattr(locked, name, value)
    locked.save(update_fields=["text", "rule_ids", "token_count", "content_hash", "updated_at"])
    if before != locked.content_hash:
        audit.record(
            "policy.draft_edited",
            actor=author,
            obj=locked,
            payload={
                "policy": locked.policy.slug,
                "number": locked.number,
                "content_hash_before": before,
                "content_hash": locked.content_hash,
                "token_count": locked.token_count,
            },
        )
    return locked


@transaction.atomic
def policy_version_publish(*, version: PolicyVersion, author: User, text: str | None = None) -> PolicyVersion:
    """Freeze a draft: from now on its text never changes (PostgreSQL enforces it too).

    With ``text`` (what the editor shows, perhaps not saved yet) the draft is saved first, as a save would
    (checked, audited as an edit when it changed), and that text is what gets published: in one transaction.
    """
    if text is not None:
        if not PolicyVersion.objects.filter(pk=version.pk, status=PolicyVersion.Status.DRAFT).exists():
            raise PolicyVersionRefused(f"v{version.number} is already published")
        policy_draft_update(version=version, text=text, author=author)
    published = PolicyVersion.objects.filter(pk=version.pk, status=PolicyVersion.Status.DRAFT).update(
        status=PolicyVersion.Status.PUBLISHED, published_at=timezone.now()
    )
    if published != 1:
        raise PolicyVersionRefused(f"v{version.number} is already published")
    version.refresh_from_db()
    audit.record(
        "policy.version_published",
        actor=author,
        obj=version,
        payload={
            "policy": version.policy.slug,
            "number": version.number,
            "content_hash": version.content_hash,
        },
    )
    return version


@dataclass(frozen=True)
class Activation:
    version: PolicyVersion
    overridden: bool
    gate_reasons: list[str]


@transaction.atomic
def policy_version_activate(*, version: PolicyVersion, actor: User, override_reason: str = "") -> Activation:
    """Make a published version the active one, for new cases only (existing cases keep theirs).

    The evaluation gate must pass (``reviews.evaluations.activation_gate``), or the actor overrides it
    with a reason, which is audited.
    """
    from reviews.evaluations import activation_gate

    Policy.objects.select_for_update().get(pk=version.policy_id)  # one activation at a time per policy
    version = PolicyVersion.objects.select_related("policy").get(pk=version.pk)
    if version.is_draft:
        raise PolicyVersionRefused(f"v{version.number} is a draft: publish it first")
    if version.status == PolicyVersion.Status.ACTIVE:
        raise PolicyVersionRefused(f"v{version.number} is already active")
    gate = activation_gate(version)
    override_reason = override_reason.strip()
    if not gate.passed and not override_reason:
        raise PolicyVersionRefused("the activation gate is closed: " + " ".join(gate.reasons))
    previous = version.policy.versions.filter(status=PolicyVersion.Status.ACTIVE).first()
    _version_make_active(version)
    payload: dict[str, Any] = {
        "policy": version.policy.slug,
        "number": version.number,
        "previous": previous.number if previous else None,
        "run": gate.run.pk if gate.run else None,
        "baseline_run": gate.baseline.pk if gate.baseline else None,
    }
    if gate.passed:
        audit.record("policy.version_activated", actor=actor, obj=version, payload=payload)
    else:
        audit.record(
            "policy.version_activation_overridden",
            actor=actor,
            obj=version,
            payload={**payload, "reason": override_reason, "gate_reasons": gate.reasons},
        )
    return Activation(version=version, overridden=not gate.passed, gate_reasons=gate.reasons)
