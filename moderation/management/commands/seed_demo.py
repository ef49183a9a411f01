from __future__ import annotations

import json
import os
import secrets
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from accounts.roles import Role
from moderation import services
from moderation.models import Source
from policies import golden
from policies import services as policy_services
from policies.models import GoldenExample, Policy
from reviews import users

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo"
DEMO_POLICIES = [
    ("spam", "Spam and scams", "spam.md"),
    ("harassment", "Harassment and threats", "harassment.md"),
]
# More example policies for the policy team to start from; not attached to the demo source, so the demo
# content is not judged (and queued) once per policy.
EXAMPLE_POLICIES = [
    ("personal-information", "Personal information and doxxing", "personal-information.md"),
    ("impersonation", "Impersonation", "impersonation.md"),
]
DEMO_SOURCE = "demo-forum"
# One login per role besides `admin`; the two reviewer roles are granted the demo policies' queues.
DEMO_USERS = [
    ("moderator", Role.MODERATOR),
    ("senior", Role.SENIOR_MODERATOR),
    ("editor", Role.POLICY_EDITOR),
    ("auditor", Role.AUDITOR),
]


class Command(BaseCommand):
    help = "Load demo policies, a demo source and fictional demo content (safe to run again)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--admin-password",
            default=os.environ.get("DEMO_ADMIN_PASSWORD", ""),
            help="password for the demo 'admin' user (default: $DEMO_ADMIN_PASSWORD, else a new random one)",
        )
        parser.add_argument(
            "--demo-password",
            default=os.environ.get("DEMO_PASSWORD", ""),
            help="password for the other demo users (moderator, senior, editor, auditor; default: "
            "$DEMO_PASSWORD, else a new random one each)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        password = options["admin_password"] or secrets.token_urlsafe(12)
        admin, _ = get_user_model().objects.get_or_create(
            username="admin", defaults={"is_staff": True, "is_superuser": True}
        )
        admin.set_password(password)
        admin.save()
        admin.groups.add(Group.objects.get_or_create(name=Role.ADMIN.value)[0])

        policies = [self._policy(slug, name, filename) for slug, name, filename in DEMO_POLICIES]
        for slug, name, filename in EXAMPLE_POLICIES:
            self._policy(slug, name, filename)
        # Before the content arrives, so its first triage already uses them: with these the funnel tier
        # trains a regression (in shadow mode: 8 violations prove no recall, so it scores and clears
        # nothing) and evaluation runs have data.
        for policy in policies:
            self._golden_set(policy, admin)
        source = Source.objects.filter(slug=DEMO_SOURCE).first()
        if source is None:
            created = services.source_create(name="Demo forum", slug=DEMO_SOURCE, policies=policies)
            source = created.source
            self.stdout.write(f"demo source api key: {created.api_key}")
        logins = [("admin", password, "admin: every queue, /admin/")]
        for username, role in DEMO_USERS:
            demo_password = options["demo_password"] or secrets.token_urlsafe(12)
            grants = policies if role in users.QUEUE_ROLES else []
            self._demo_user(username, role, demo_password, grants)
            queues = f": queues {', '.join(p.slug for p in grants)}" if grants else ""
            logins.append((username, demo_password, f"{role.value}{queues}"))
        items = [json.loads(line) for line in (DEMO_DIR / "content.jsonl").read_text().splitlines() if line]
        ingested = services.items_ingest(
            source=source,
            items=[
                services.ItemIn(
                    external_id=i["external_id"],
                    text=i.get("text") or services.transcript_render(i["transcript"]),
                    transcript=i.get("transcript"),
                    metadata=i.get("metadata", {}),
                )
                for i in items
            ],
        )
        self.stdout.write(
            f"demo content: {sum(i.created for i in ingested)} new items, {len(ingested)} in all"
        )
        self.stdout.write("demo logins (username / password):")
        width = max(len(username) for username, _, _ in logins)
        for username, login_password, what in logins:
            self.stdout.write(f"  login: {username:<{width}} / {login_password}   ({what})")

    def _demo_user(self, username: str, role: Role, password: str, policies: list[Policy]) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            users.user_create(
                username=username,
                role=role,
                password=password,
                policies=policies,
                via="manage.py seed_demo",
                validate=False,
            )
            return
        user.set_password(password)
        user.save(update_fields=["password"])

    def _policy(self, slug: str, name: str, filename: str) -> Policy:
        policy, _ = Policy.objects.get_or_create(slug=slug, defaults={"name": name})
        if not policy.versions.exists():
            policy_services.policy_version_create(
                policy=policy, text=(DEMO_DIR / filename).read_text(), activate=True
            )
        return policy

    def _golden_set(self, policy: Policy, admin: Any) -> None:
        path = DEMO_DIR / "golden" / f"{policy.slug}.jsonl"
        if not path.exists() or GoldenExample.objects.filter(policy=policy).exists():
            return
        preview = golden.golden_import_preview(policy=policy, name=path.name, data=path.read_bytes())
        if preview.error or preview.invalid:
            raise CommandError(f"{path}: {preview.error or preview.invalid[0].error}")
        imported = golden.golden_import(
            policy=policy,
            actor=admin,
            rows=preview.rows,
            status=GoldenExample.Status.ACCEPTED,
            file_name=path.name,
        )
        self.stdout.write(f"golden set of {policy.slug}: {len(imported)} accepted examples")
