from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils.text import slugify

from moderation import services
from policies.models import Policy


class Command(BaseCommand):
    help = "Create a Source (a platform that sends content) and print its API key and HMAC secret once."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--slug", help="defaults to the slugified name")
        parser.add_argument("--policy", action="append", default=[], help="policy slug to apply (repeatable)")
        parser.add_argument("--callback-url", default="")
        parser.add_argument("--require-signature", action="store_true")
        parser.add_argument("--rate-limit", type=int, help="items per minute; 0 = unlimited")

    def handle(self, *args: Any, **options: Any) -> None:
        slugs: list[str] = options["policy"]
        policies = list(Policy.objects.filter(slug__in=slugs))
        missing = set(slugs) - {p.slug for p in policies}
        if missing:
            raise CommandError(f"unknown policy: {', '.join(sorted(missing))}")
        try:
            created = services.source_create(
                name=options["name"],
                slug=options["slug"] or slugify(options["name"]),
                policies=policies,
                callback_url=options["callback_url"],
                require_signature=options["require_signature"],
                rate_limit_per_minute=options["rate_limit"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        self.stdout.write(f"source:      {created.source.slug}")
        self.stdout.write(f"api key:     {created.api_key}")
        self.stdout.write(f"hmac secret: {created.source.hmac_secret}")
        self.stdout.write("Store both now: the API key is not shown again.")
