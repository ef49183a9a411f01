"""Rule names beside rule ids: ``{% rule_names_for version as names %}``, then
``{{ rule_id|rule_name:names }}`` or ``{{ rule_ids|rules_named:names }}``. Names come from the policy's
Definitions/Criteria/Rules sections (policies.rules.policy_rule_names)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from django import template

from policies.models import Policy, PolicyVersion
from reviews.selectors import rule_names_of

register = template.Library()


@register.simple_tag(takes_context=True)
def rule_names_for(context: template.Context, owner: PolicyVersion | Policy | None) -> Mapping[str, str]:
    """A version's rule names; for a policy, its active version's (else its newest version's). Looked up
    once per rendering (a partial repeated per row asks again for free)."""
    if owner is None:
        return {}
    key = f"rule_names_for:{type(owner).__name__}:{owner.pk}"
    cached: Mapping[str, str] | None = context.render_context.get(key)
    if cached is not None:
        return cached
    version: PolicyVersion | Policy | None = owner
    if isinstance(owner, Policy):
        version = (
            owner.versions.filter(status=PolicyVersion.Status.ACTIVE).first()
            or owner.versions.order_by("-number").first()
        )
    names = rule_names_of(version) if isinstance(version, PolicyVersion) else {}
    context.render_context[key] = names
    return names


@register.filter
def rule_name(rule_id: str, names: Mapping[str, str] | None) -> str:
    return (names or {}).get(rule_id, "")


@register.filter
def rules_named(rule_ids: Iterable[str] | None, names: Mapping[str, str] | None) -> str:
    """``SP1 (Deceptive links), SP4`` -- an id the policy does not name stays bare."""
    names = names or {}
    return ", ".join(f"{r} ({names[r]})" if names.get(r) else r for r in rule_ids or ())
