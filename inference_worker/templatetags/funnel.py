"""How the review pages name what the funnel tier stored with a score."""

from __future__ import annotations

from django import template

register = template.Library()

# funnel.Example.origin: the policy's Examples section, or the golden set.
EXAMPLE_ORIGINS = {"policy": "policy text", "golden": "golden set"}


@register.filter
def example_origin(origin: str) -> str:
    """Where a nearest labelled example comes from: "policy" -> "policy text", "golden" -> "golden set"."""
    return EXAMPLE_ORIGINS.get(origin, EXAMPLE_ORIGINS["golden"])
