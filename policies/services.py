"""Policy writes: policies, drafts, published (immutable) versions, settings and activation."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from audit import services as audit
from inference_worker.prompts import token_count
from policies.evaluations import activation_gate
from policies.models import Policy, PolicyVersion
from policies.rules import policy_rule_ids_parse


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
    *, policy: Policy, actor: User, settings: dict[str, Any], source_ids: Sequence[int]
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
    sources = list(locked.sources.model.objects.filter(pk__in=source_ids))  # Source: an app above this one
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

    The evaluation gate must pass (``policies.evaluations.activation_gate``), or the actor overrides it
    with a reason, which is audited.
    """
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
