"""How the case page names where a funnel score's nearest labelled examples come from."""

from __future__ import annotations

from django.template import Context, Template


def test_it_names_the_origin_of_a_nearest_example() -> None:
    template = Template("{% load funnel %}{{ a|example_origin }} / {{ b|example_origin }}")
    assert template.render(Context({"a": "policy", "b": "golden"})) == "policy text / golden set"
