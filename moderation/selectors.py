from __future__ import annotations

from django.db.models import QuerySet

from moderation.models import Case, ContentItem, Source

CASE_STATES_PENDING = {Case.State.PENDING_TRIAGE, Case.State.TRIAGING}
CASE_STATES_IN_REVIEW = {Case.State.QUEUED, Case.State.CLAIMED, Case.State.ESCALATED, Case.State.APPEALED}


def source_by_api_key(key: str) -> Source | None:
    key_id = Source.api_key_id_of(key)
    if key_id is None:
        return None
    source = Source.objects.filter(api_key_id=key_id, is_active=True).first()
    if source is None or not source.api_key_matches(key):
        return None
    return source


def items_of_source(source: Source) -> QuerySet[ContentItem]:
    return ContentItem.objects.filter(source=source)


class NotAppealable(Exception):
    """No single case to appeal; `ambiguous` when the item was judged under several policies."""

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


def case_appealable(item: ContentItem, *, policy_slug: str | None) -> Case:
    """The original (not appeal, not QA) case of the item under the named policy, or NotAppealable."""
    cases = list(
        Case.objects.filter(item=item, appeal_of__isnull=True, qa_of__isnull=True).select_related(
            "policy_version__policy"
        )
    )
    if policy_slug is not None:
        cases = [c for c in cases if c.policy_version.policy.slug == policy_slug]
        if not cases:
            raise NotAppealable(f"no case of this item under policy {policy_slug!r}")
    if len(cases) > 1:
        policies = ", ".join(sorted(c.policy_version.policy.slug for c in cases))
        raise NotAppealable(
            f"this item was judged under several policies ({policies}); name one in 'policy'", ambiguous=True
        )
    if not cases:
        raise NotAppealable("this item has no case to appeal")
    return cases[0]
