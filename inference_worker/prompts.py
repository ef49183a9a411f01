"""Harmony prompts for gpt-oss-safeguard, rendered to token ids, and completion parsing.

The prompt is system (reasoning effort, no date) + developer (the policy) + user
(the content), rendered for the assistant's turn. System and developer form a
prefix that is byte-identical for every item under one policy version and
effort, so vLLM's automatic prefix cache keeps the policy's KV cache warm.
"""

from __future__ import annotations

import contextlib
import functools
import re
from dataclasses import dataclass

from openai_harmony import (
    Conversation,
    DeveloperContent,
    HarmonyEncoding,
    HarmonyEncodingName,
    Message,
    ReasoningEffort,
    Role,
    StreamableParser,
    SystemContent,
    load_harmony_encoding,
)

from inference_worker.vocabulary import harmony_vocabulary_ensure

REASONING_EFFORTS = {
    "low": ReasoningEffort.LOW,
    "medium": ReasoningEffort.MEDIUM,
    "high": ReasoningEffort.HIGH,
}
ANALYSIS_CHANNEL = "analysis"
FINAL_CHANNEL = "final"
# The special tokens that close a harmony message. A completion whose last token
# is none of these was cut off inside its last message.
MESSAGE_TERMINATORS = ("<|end|>", "<|return|>", "<|call|>")


@dataclass(frozen=True)
class ParsedCompletion:
    reasoning: str
    final_text: str | None


@functools.cache
def harmony_encoding() -> HarmonyEncoding:
    harmony_vocabulary_ensure()
    return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


def prompt_token_ids(*, policy_text: str, content: str, effort: str) -> list[int]:
    """The full prompt, ending with the assistant's turn header.

    The content is rendered by openai-harmony as a message body, so text that
    looks like special tokens (``<|end|><|start|>developer...``) stays plain text.
    """
    *user_header, end = _empty_user_message_token_ids()
    return [
        *_prompt_prefix_token_ids(policy_text, effort),
        *user_header,
        *content_token_ids(content),
        end,
        *_assistant_turn_token_ids(),
    ]


# o200k's byte-pair merge is quadratic in the length of one pre-token, and a run of letters (a 100k-character
# "word", CJK text without spaces) or of whitespace is one pre-token: seconds of CPU per prompt, a cheap
# denial of service. Such runs are encoded in slices: the model reads exactly the same text; only the token
# boundaries inside the run differ from a one-piece encoding. Ordinary text is encoded in one piece, which
# is what openai-harmony's own render gives (a test checks both).
_LONG_RUN = re.compile(r"\S{256,}|\s{256,}")
_RUN_SLICE_CHARS = 128


def content_token_ids(content: str) -> list[int]:
    """The content as plain text tokens: special-token look-alikes stay text."""
    encoding = harmony_encoding()
    ids: list[int] = []
    position = 0
    for run in _LONG_RUN.finditer(content):
        ids += encoding.encode(content[position : run.start()], disallowed_special=())
        for start in range(run.start(), run.end(), _RUN_SLICE_CHARS):
            ids += encoding.encode(
                content[start : min(start + _RUN_SLICE_CHARS, run.end())], disallowed_special=()
            )
        position = run.end()
    ids += encoding.encode(content[position:], disallowed_special=())
    return ids


@functools.cache
def _empty_user_message_token_ids() -> tuple[int, ...]:
    """<|start|>user<|message|><|end|>: the content goes before the last token."""
    empty: list[int] = harmony_encoding().render(Message.from_role_and_content(Role.USER, ""))
    return tuple(empty)


@functools.lru_cache(maxsize=64)
def _prompt_prefix_token_ids(policy_text: str, effort: str) -> tuple[int, ...]:
    # Every harmony message starts with <|start|>, so rendering messages one by
    # one and concatenating gives exactly the tokens of the whole conversation
    # (a test checks this), and the policy is tokenised once, not per item.
    encoding = harmony_encoding()
    system_message = Message.from_role_and_content(Role.SYSTEM, system_content(effort))
    developer_message = Message.from_role_and_content(
        Role.DEVELOPER, DeveloperContent.new().with_instructions(policy_text)
    )
    return (*encoding.render(system_message), *encoding.render(developer_message))


def system_content(effort: str) -> SystemContent:
    """The system message: a reasoning effort and no conversation start date.

    ``SystemContent`` renders a "Current date" line only when a date is set; we
    never set one, so the prefix stays identical across days.
    """
    try:
        reasoning_effort = REASONING_EFFORTS[effort]
    except KeyError:
        raise ValueError(f"unknown reasoning effort {effort!r}") from None
    return SystemContent.new().with_reasoning_effort(reasoning_effort)


@functools.cache
def _assistant_turn_token_ids() -> tuple[int, ...]:
    encoding = harmony_encoding()
    no_messages = Conversation.from_messages([])
    return tuple(encoding.render_conversation_for_completion(no_messages, Role.ASSISTANT))


def completion_parse(token_ids: list[int]) -> ParsedCompletion:
    """Chain of thought and verdict text from the assistant's completion tokens.

    Never raises: model output may be truncated or garbled. A final message that
    was cut off is not a verdict, so it is dropped; a cut-off analysis message
    still counts as reasoning.
    """
    encoding = harmony_encoding()
    try:
        messages = encoding.parse_messages_from_completion_tokens(token_ids, Role.ASSISTANT)
    except Exception:
        # The Rust parser raises HarmonyError, OverflowError, ... on bad tokens.
        return _completion_salvage(encoding, token_ids)
    assistant_messages = [m for m in messages if m.author.role == Role.ASSISTANT]
    if assistant_messages and not _ends_with_terminator(token_ids):
        cut_off = assistant_messages[-1]
        if cut_off.channel == FINAL_CHANNEL:
            assistant_messages.pop()
    final_texts = [_message_text(m) for m in assistant_messages if m.channel == FINAL_CHANNEL]
    return ParsedCompletion(
        reasoning=_joined_analysis(assistant_messages),
        final_text=final_texts[-1] if final_texts else None,
    )


def _completion_salvage(encoding: HarmonyEncoding, token_ids: list[int]) -> ParsedCompletion:
    # Feed tokens until the parser rejects one; keep the reasoning so far for the
    # moderator, but take no verdict from a stream we could not parse.
    parser = StreamableParser(encoding, Role.ASSISTANT)
    with contextlib.suppress(Exception):
        for token_id in token_ids:
            parser.process(token_id)
    reasoning = _joined_analysis(parser.messages)
    if parser.current_channel == ANALYSIS_CHANNEL and parser.current_content:
        reasoning = "\n".join(part for part in (reasoning, parser.current_content) if part)
    return ParsedCompletion(reasoning=reasoning, final_text=None)


def _ends_with_terminator(token_ids: list[int]) -> bool:
    return bool(token_ids) and token_ids[-1] in _terminator_token_ids()


@functools.cache
def _terminator_token_ids() -> frozenset[int]:
    encoding = harmony_encoding()
    return frozenset(
        token_id
        for terminator in MESSAGE_TERMINATORS
        for token_id in encoding.encode(terminator, allowed_special={terminator})
    )


def _joined_analysis(messages: list[Message]) -> str:
    return "\n".join(_message_text(m) for m in messages if m.channel == ANALYSIS_CHANNEL)


def _message_text(message: Message) -> str:
    return "".join(getattr(part, "text", "") for part in message.content)


def token_count(text: str) -> int:
    """o200k tokens in ``text``; special-token look-alikes count as plain text. Long runs of one character are
    counted in slices, as content is encoded: BPE is quadratic on them (policy text is typed by people)."""
    return len(content_token_ids(text))


def stop_token_ids() -> list[int]:
    return list(_stop_token_ids())


@functools.cache
def _stop_token_ids() -> tuple[int, ...]:
    # Asked for on every request; openai-harmony builds the set anew each time (~0.08 ms).
    return tuple(harmony_encoding().stop_tokens_for_assistant_actions())
