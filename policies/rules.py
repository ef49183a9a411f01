"""The rule ids a policy defines.

Our policies define a rule on a line of its own: an optional bullet (``-`` or
``*``), optional markdown bold and brackets, then the id (1-6 capital letters,
an optional ``-``, digits, an optional ``.digits``: ``HS1``, ``SP2.1``,
``VIO-3``) followed by ``:``, ``)`` or `` -``. Ids mentioned in running prose
are references, not definitions.
"""

from __future__ import annotations

import re

_RULE_DEFINITION = re.compile(
    r"""
    ^[ \t]*
    (?:[-*][ \t]+)?                         # optional bullet
    (?:\*\*|__)?                            # optional bold
    \[?                                     # optional bracket
    (?P<rule_id>[A-Z]{1,6}-?[0-9]+(?:\.[0-9]+)?)
    \]?
    (?:\*\*|__)?
    (?::|\)|[ \t]+-)                        # ":" or ")" or " -"
    """,
    re.MULTILINE | re.VERBOSE,
)


def policy_rule_ids_parse(policy_text: str) -> list[str]:
    """Rule ids defined by ``policy_text``, in order of definition, without repeats."""
    found = (match["rule_id"] for match in _RULE_DEFINITION.finditer(policy_text))
    return list(dict.fromkeys(found))


def policy_rule_definitions(policy_text: str) -> list[str]:
    """Every rule id definition in ``policy_text``, repeats included (to find duplicates)."""
    return [match["rule_id"] for match in _RULE_DEFINITION.finditer(policy_text)]


_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]*(?P<title>.+?)[ \t#]*$")
_NAMING_SECTIONS = ("definition", "criteri", "rule")
RULE_NAME_MAX_CHARS = 60


def policy_rule_names(policy_text: str) -> dict[str, str]:
    """Rule id -> a short name: the definition's words up to the first ``:``, ``;``, ``,``, ``.`` or
    `` (`` (at most RULE_NAME_MAX_CHARS characters), read from the Definitions, Criteria or Rules sections
    (the whole text when it has no such heading). The first definition of an id wins."""
    lines = policy_text.splitlines()
    titled = [m["title"].casefold() for line in lines if (m := _HEADING.match(line))]
    use_sections = any(t.startswith(_NAMING_SECTIONS) for t in titled)
    names: dict[str, str] = {}
    inside = not use_sections
    for line in lines:
        heading = _HEADING.match(line)
        if heading:
            inside = not use_sections or heading["title"].casefold().startswith(_NAMING_SECTIONS)
            continue
        if not inside:
            continue
        match = _RULE_DEFINITION.match(line)
        if match is None or match["rule_id"] in names:
            continue
        names[match["rule_id"]] = _short_name(line[match.end() :])
    return names


def _short_name(definition: str) -> str:
    words = definition.strip().lstrip("-").strip()
    cut = len(words)
    for mark in (":", ";", ",", ". ", " ("):
        at = words.find(mark)
        if 0 < at < cut:
            cut = at
    name = words[:cut].rstrip(". ")
    if len(name) > RULE_NAME_MAX_CHARS:
        name = name[: RULE_NAME_MAX_CHARS - 1].rsplit(" ", 1)[0].rstrip() + "…"
    return name
