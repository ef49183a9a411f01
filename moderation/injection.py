"""Spot content that tries to steer the safety model: shown to moderators as a warning, never a verdict.

The prompt itself is safe from it (content is encoded as ordinary text tokens, see inference_worker/prompts),
but a model can still be talked into a wrong answer, so a human should know the content tried.
Cheap by design: a handful of regular expressions run once per item at ingestion.
"""

from __future__ import annotations

import re

# Each pattern names why it fired; the first match per reason is enough.
_SIGNALS: list[tuple[str, re.Pattern[str]]] = [
    (
        "harmony special token",
        re.compile(r"<\|(?:start|end|message|channel|constrain|return|call|endoftext|startoftext)\|>"),
    ),
    (
        "role or channel marker",
        re.compile(
            # [ \t]*, not \s*: at every line start \s* would run across all following blank lines (quadratic).
            r"(?im)^[ \t]*(?:system|developer|assistant)[ \t]*:|\bchannel[ \t]*[:=][ \t]*final\b"
            r"|\[/?(?:INST|SYS)\]|<<SYS>>|<\|im_(?:start|end)\|>"
        ),
    ),
    (
        "instruction override",
        re.compile(
            r"(?i)\b(?:ignore|disregard|forget|override|bypass)\s+(?:all\s+|any\s+|the\s+|your\s+|previous\s+"
            r"|prior\s+|above\s+|earlier\s+|these\s+|those\s+)*(?:instructions?|polic(?:y|ies)|rules?"
            r"|guidelines?|prompts?|system\s+prompt)\b"
        ),
    ),
    (
        "verdict dictation",
        # "answer 0." / "respond with violation 0" / "classify this as safe"; not "say 1 thing nice".
        re.compile(
            r"(?i)\b(?:answer|respond|reply|output|return|say|classify(?:\s+this)?\s+as)\s+(?:with\s+)?"
            r"(?:only\s+)?(?:[\"'`]?violation[\"'`]?\s*[:=]?\s*[\"'`]?[01]\b|[\"'`]?[01][\"'`]?(?=\s*(?:[.!,;)]|$))"
            r"|safe\b|not\s+violating\b)",
            re.MULTILINE,
        ),
    ),
    ("verdict JSON", re.compile(r"""(?i)[{,]\s*["']?violation["']?\s*:\s*["']?[01]\b""")),
]


def injection_signals(text: str) -> list[str]:
    """Why the text looks like a prompt-injection attempt (empty: it does not)."""
    return [reason for reason, pattern in _SIGNALS if pattern.search(text)]
