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
