"""Test helpers for the review workflow: personas, quick cases, and a loopback callback receiver.

Plain functions (the fixtures in tests/conftest.py wrap them), so tests of other apps can use them.
"""

from __future__ import annotations

import itertools
import re
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from django.contrib.auth.models import Group, User
from django.utils import timezone

from moderation.models import Case, ContentItem, Source
from policies.models import Policy, PolicyVersion
from reviews.models import QueueGrant

_serial = itertools.count(1)


def user_create(username: str, *roles: str, grants: Sequence[Policy] = ()) -> User:
    """A user in the given role groups, granted the given queues."""
    user = User.objects.create_user(username=username, password="not-used-in-tests")
    for role in roles:
        # get_or_create: a transactional test flushes the groups the migration created.
        group, _ = Group.objects.get_or_create(name=role)
        user.groups.add(group)
    for policy in grants:
        QueueGrant.objects.create(user=user, policy=policy)
    return user


def cases_create(
    policy: Policy,
    source: Source,
    count: int = 1,
    *,
    state: str = Case.State.QUEUED,
    verdict: str = "violates",
    confidence: str = "high",
    priority: int = 70,
    queued_at: datetime | None = None,
    text: str = "buy zorblax now, limited offer",
    **fields: Any,
) -> list[Case]:
    """Cases waiting in a policy's queue, made without going through triage."""
    version = policy.versions.get(status=PolicyVersion.Status.ACTIVE)
    items = ContentItem.objects.bulk_create(
        [
            ContentItem(source=source, external_id=f"item-{next(_serial)}", text=f"{text} #{n}")
            for n in range(count)
        ]
    )
    when = queued_at or timezone.now()
    return Case.objects.bulk_create(
        [
            Case(
                item=item,
                policy_version=version,
                state=state,
                verdict=verdict,
                confidence=confidence,
                priority=priority,
                queued_at=when,
                route_reason=f"model: {verdict} ({confidence} confidence)",
                **fields,
            )
            for item in items
        ]
    )


CASE_LINK = re.compile(r'href="/cases/(\d+)/"')


def case_ids_in(html: bytes | str) -> list[int]:
    """The case ids linked from a page, in page order."""
    text = html.decode() if isinstance(html, bytes) else html
    return [int(pk) for pk in CASE_LINK.findall(text)]


ROW = re.compile(r"<tr\b[^>]*>(.*?)</tr>", re.S)
CELL = re.compile(r"<t[dh]\b[^>]*>(.*?)</t[dh]>", re.S)
TAG = re.compile(r"<[^>]+>")


def text_of(html: bytes | str) -> str:
    """What a reader sees: tags dropped, whitespace collapsed."""
    text = html.decode() if isinstance(html, bytes) else html
    return " ".join(TAG.sub(" ", text).split())


def table_rows(html: bytes | str) -> list[list[str]]:
    """Every table row of a page as the text of its cells (markup and attributes may change freely)."""
    text = html.decode() if isinstance(html, bytes) else html
    return [[text_of(cell) for cell in CELL.findall(row)] for row in ROW.findall(text)]


@dataclass(frozen=True)
class ReceivedCallback:
    path: str
    headers: dict[str, str]
    body: bytes


class CallbackReceiver:
    """A platform's callback endpoint on 127.0.0.1: records every request, answers with `status`."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[ReceivedCallback] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver.received.append(
                    ReceivedCallback(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/decisions"

    def __enter__(self) -> CallbackReceiver:
        self.thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def refused_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/decisions"
