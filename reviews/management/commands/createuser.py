from __future__ import annotations

import getpass
import secrets
import sys
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.roles import Role
from reviews import users


class Command(BaseCommand):
    help = (
        "Create a user in one role, granted the given queues, audited as user.created. The password comes "
        "from a prompt, --password-file, or is generated and printed once."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, help=f"one of: {', '.join(repr(r.value) for r in Role)}")
        parser.add_argument(
            "--queues",
            default="",
            help="comma-separated policy slugs the user reviews (moderators and senior moderators)",
        )
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--password-file", help="read the password from this file (first line)")
        source.add_argument(
            "--generate-password",
            action="store_true",
            help="generate a password and print it once (the default when there is no terminal to ask on)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            role = users.role_parse(options["role"])
            slugs = [s.strip() for s in options["queues"].split(",") if s.strip()]
            policies = users.policies_parse(slugs)
            password, generated = self._password(options)
            user = users.user_create(
                username=options["username"],
                role=role,
                password=password,
                policies=policies,
                via="manage.py createuser",
            )
        except users.UserRefused as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"user:     {user.username}")
        self.stdout.write(f"role:     {role.value}")
        self.stdout.write(f"queues:   {', '.join(p.slug for p in policies) or '-'}")
        if generated:
            self.stdout.write(f"password: {password}")
            self.stdout.write("Store it now: it is not shown again.")

    def _password(self, options: dict[str, Any]) -> tuple[str, bool]:
        if options["password_file"]:
            try:
                lines = Path(options["password_file"]).read_text().splitlines()
            except OSError as exc:
                raise CommandError(f"cannot read the password file: {exc.strerror}") from exc
            if not lines or not lines[0]:
                raise CommandError("the password file is empty")
            return lines[0], False
        if options["generate_password"] or not sys.stdin.isatty():
            return secrets.token_urlsafe(16), True
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Password (again): "):
            raise CommandError("the two passwords differ")
        if not password:
            raise CommandError("an empty password is not allowed")
        return password, False
