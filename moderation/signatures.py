"""HMAC-SHA256 request signatures: X-Signature: sha256=hex(HMAC(secret, f"{timestamp}.{body}"))."""

from __future__ import annotations

import hashlib
import hmac
import time

from moderation.redis import redis_client

SIGNATURE_SCHEME = "sha256="


class SignatureRefused(Exception):
    pass


def signature_compute(*, secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return SIGNATURE_SCHEME + digest


def signature_verify(
    *,
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    window_seconds: int,
    replay_scope: str,
) -> None:
    """Raise SignatureRefused unless the signature is valid, fresh and not seen before."""
    if not timestamp or not signature:
        raise SignatureRefused("X-Signature and X-Signature-Timestamp headers are required")
    # int() would also take "+17", " 17" or Arabic-Indic digits: only ASCII digits are Unix seconds.
    if not (timestamp.isascii() and timestamp.isdigit()):
        raise SignatureRefused("X-Signature-Timestamp must be integer Unix seconds")
    sent_at = int(timestamp)
    if abs(time.time() - sent_at) > window_seconds:
        raise SignatureRefused("signature timestamp is outside the 5-minute window")
    expected = signature_compute(secret=secret, timestamp=timestamp, body=body)
    # As bytes: compare_digest refuses (TypeError) a str with non-ASCII characters, which a header can carry.
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise SignatureRefused("signature does not match the body")
    # A valid signature may be used once: remember it for longer than the window it is valid in.
    first_use = redis_client().set(
        f"replay:{replay_scope}:{signature}", 1, nx=True, ex=window_seconds * 2 + 60
    )
    if not first_use:
        raise SignatureRefused("this signed request was already received (replay)")
