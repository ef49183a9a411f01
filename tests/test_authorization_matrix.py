"""Every URL of the project x every role, against one explicit table of expected outcomes.

The URL list comes from the URL conf itself (walked recursively: the review pages, the ninja API, the
Django admin), so a new page without a row in RULES fails ``test_every_url_has_a_rule``. Each request
runs in a savepoint that is rolled back: one role's claim or decision never changes the next role's answer.

To add a page: add a row to RULES keyed by its URL name (``namespace:name``; unnamed patterns by their
route), built with ``page()``, ``api()`` or an explicit ``Rule``; if its route has a new kwarg, teach
``url_kwargs`` where to find a real object for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from accounts.roles import Role
from audit.tokens import api_token_create
from inference_worker.testing.fixtures import engine_config_for
from moderation.models import AutoClearSuspension, Case
from policies.evaluations import ExampleIn, evaluation_run_create
from policies.models import GoldenExample, Policy, StatementOfReasonsMapping
from policies.services import policy_draft_create
from reviews.models import CallbackDelivery, Decision, QueueGrant
from tests.conftest import ApiClient, source_api_client
from tests.reviews.helpers import cases_create, user_create

pytestmark = pytest.mark.hostile

ROLES = (
    "anonymous",
    "no_group",  # logged in, in no role group
    "moderator",
    "senior_moderator",
    "policy_editor",
    "auditor",
    "admin",  # the admin group, staff and superuser (what seed_demo creates)
    "source",  # the API key of the source that owns the test item
    "other_source",  # another source's API key
    "auditor_token",  # an auditor's personal API token (the export API)
    "moderator_token",  # a token whose user is not an auditor
)
TOKENS = ("auditor_token", "moderator_token")
REVIEWERS = frozenset({"moderator", "senior_moderator", "admin"})
METRICS_VIEWERS = frozenset({"moderator", "senior_moderator", "policy_editor", "auditor", "admin"})
POLICY_EDITORS = frozenset({"policy_editor", "admin"})
SESSION_ROLES = frozenset(ROLES) - {"anonymous", "source", "other_source", *TOKENS}
AUDITORS = frozenset({"auditor", "admin"})

LOGIN = "login"  # 302 to /login/?next=...
ADMIN_LOGIN = "admin login"  # 302 to /admin/login/?next=...


@dataclass(frozen=True)
class Rule:
    """What each role gets for one request to a URL: an HTTP status, or LOGIN / ADMIN_LOGIN."""

    method: str
    outcomes: dict[str, int | str]
    data: dict[str, Any] = field(default_factory=dict)


def page(method: str, allowed: frozenset[str], ok: int = 200, denied: int = 403, **data: Any) -> Rule:
    """A dashboard page: anonymous users (and API keys or tokens, which pages ignore) are sent to log in."""
    outcomes: dict[str, int | str] = {
        role: LOGIN for role in ("anonymous", "source", "other_source", *TOKENS)
    }
    outcomes.update({role: ok if role in allowed else denied for role in SESSION_ROLES})
    return Rule(method, outcomes, data)


def api(method: str, source: int, other_source: int, **data: Any) -> Rule:
    """An API endpoint: only a source's key counts; a browser session is not a credential."""
    outcomes: dict[str, int | str] = {role: 401 for role in ("anonymous", *SESSION_ROLES, *TOKENS)}
    outcomes.update(source=source, other_source=other_source)
    return Rule(method, outcomes, data)


def export_api() -> Rule:
    """The audit export API: only a personal token counts, and only an auditor's (or admin's)."""
    outcomes: dict[str, int | str] = {role: 401 for role in ROLES}
    outcomes.update(auditor_token=200, moderator_token=403)
    return Rule("GET", outcomes)


def everyone(method: str, status: int) -> Rule:
    return Rule(method, dict.fromkeys(ROLES, status))


def staff_only(method: str = "GET", ok: int = 200) -> Rule:
    outcomes: dict[str, int | str] = {role: ADMIN_LOGIN for role in ROLES}
    outcomes["admin"] = ok
    return Rule(method, outcomes)


# Admin pages generated per registered model: a new ModelAdmin must be listed here first.
ADMIN_MODELS = (
    "auth_group",
    "auth_user",
    "moderation_source",
    "policies_policy",
    "reviews_queuegrant",
    "policies_goldenexample",
    "reviews_callbackdelivery",
    "policies_statementofreasonsmapping",
    "audit_apitoken",
)
ADMIN_MODEL_ROUTES = {
    "auth_group": "admin/auth/group/<path:object_id>/",
    "auth_user": "admin/auth/user/<path:object_id>/",
    "moderation_source": "admin/moderation/source/<path:object_id>/",
    "policies_policy": "admin/policies/policy/<path:object_id>/",
    "reviews_queuegrant": "admin/reviews/queuegrant/<path:object_id>/",
    "policies_goldenexample": "admin/policies/goldenexample/<path:object_id>/",
    "reviews_callbackdelivery": "admin/reviews/callbackdelivery/<path:object_id>/",
    "policies_statementofreasonsmapping": "admin/policies/statementofreasonsmapping/<path:object_id>/",
    "audit_apitoken": "admin/audit/apitoken/<path:object_id>/",
}

RULES: dict[str, Rule] = {
    "healthz": everyone("GET", 200),
    "api_docs": everyone("GET", 200),
    "favicon": everyone("GET", 302),  # to the static icon
    "login": Rule("GET", {**{r: 200 for r in ROLES}, **{r: 302 for r in SESSION_ROLES}}),
    "logout": Rule("POST", {**{r: 302 for r in ROLES}}),
    # Review pages.
    "reviews:home": Rule(
        "GET",
        {**page("GET", REVIEWERS).outcomes, **{r: 302 for r in SESSION_ROLES}},  # to queue or metrics
    ),
    "reviews:queue": page("GET", REVIEWERS),
    "reviews:queue_counts": page("GET", REVIEWERS),
    "reviews:case_next": page("POST", REVIEWERS, ok=302),  # claims the case, redirects to it
    "reviews:case_detail": page("GET", REVIEWERS),
    # Not claimed by them: the lease check answers 409 to a reviewer who may see the case.
    "reviews:case_decide": page("POST", REVIEWERS, ok=409, action="confirm"),
    "reviews:item_decide": page("POST", REVIEWERS, ok=409, action="submit"),
    "reviews:case_skip": page("POST", REVIEWERS, ok=404),  # only the holder of the case may skip it
    "reviews:case_renew": page("POST", REVIEWERS, ok=409),  # nobody holds it: nothing to renew
    "reviews:metrics": page("GET", METRICS_VIEWERS),
    "reviews:callbacks": page("GET", frozenset({"admin"})),
    # The reasoning engine's connection: admins only. An empty POST changes nothing (back to the page); the
    # test without a policy chosen sends no request (400).
    "reviews:engine_settings": page("POST", frozenset({"admin"}), ok=302),
    "reviews:engine_settings_check": page("POST", frozenset({"admin"}), ok=400),
    # Auditors: the export page and their API tokens.
    "audit:audit": page("GET", AUDITORS),
    "audit:audit_log": page("GET", AUDITORS),
    "audit:audit_export": page("GET", AUDITORS, kind="events", format="csv"),  # streams the events as CSV
    "audit:api_token_create": page("POST", AUDITORS, name="matrix"),  # the page, showing the token once
    "audit:api_token_revoke": page("POST", AUDITORS, ok=302),  # back to the audit page
    # The policy team's pages (the URL's version is a draft; the golden example a candidate).
    "reviews:policies": page("GET", POLICY_EDITORS),
    "reviews:policy_detail": page("GET", POLICY_EDITORS),
    "reviews:policy_draft_new": page("POST", POLICY_EDITORS, ok=302),  # to the new draft
    "reviews:policy_diff": page("GET", POLICY_EDITORS, ok=400),  # no versions chosen
    "reviews:policy_version": page("GET", POLICY_EDITORS),
    "reviews:policy_draft_lint": page("POST", POLICY_EDITORS, text="## Criteria\n- SP1: spam"),
    "reviews:policy_version_publish": page("POST", POLICY_EDITORS, ok=302),
    "reviews:policy_version_activate": page("POST", POLICY_EDITORS, ok=409),  # a draft: publish it first
    "reviews:golden_list": page("GET", POLICY_EDITORS),
    "reviews:golden_import": page("GET", POLICY_EDITORS),
    "reviews:golden_import_confirm": page("POST", POLICY_EDITORS, ok=302),  # nothing uploaded: back to upload
    "reviews:golden_edit": page("GET", POLICY_EDITORS),
    "reviews:golden_curate": page("POST", POLICY_EDITORS, ok=302),  # accepts the candidate
    "reviews:evaluation_run_new": page("POST", POLICY_EDITORS, ok=400),  # tests configure no engine
    "reviews:evaluation_runs_compare": page("GET", POLICY_EDITORS, ok=404),  # no runs chosen
    "reviews:evaluation_run": page("GET", POLICY_EDITORS),
    "reviews:evaluation_run_progress": page("GET", POLICY_EDITORS),
    "reviews:evaluation_run_cancel": page("POST", POLICY_EDITORS, ok=302),  # back to the cancelled run
    "reviews:policy_create": page("GET", POLICY_EDITORS),
    "reviews:policy_settings": page("GET", POLICY_EDITORS),
    # Without a reason the suspension stays (400 for those allowed to lift it).
    "reviews:autoclear_resume": page("POST", POLICY_EDITORS, ok=400),
    # The ingestion API.
    "api:openapi-json": everyone("GET", 200),
    "api:api-root": everyone("GET", 404),
    "api:not_found": everyone("GET", 404),  # any other path under /api/v1/: the JSON error shape
    "api:items_create": api("POST", source=201, other_source=201, external_id="matrix-new", text="hello"),
    "api:item_status": api("GET", source=200, other_source=404),
    "api:item_appeal": api("POST", source=409, other_source=404, reason="unfair"),  # 409: not decided yet
    "api:events_export": export_api(),
    "api:decisions_export": export_api(),
    "api:statements_export": export_api(),
    # The Django admin: staff only; its login page is public.
    "admin:index": staff_only(),
    "admin:login": Rule("GET", {**{r: 200 for r in ROLES}, "admin": 302}),
    "admin:logout": everyone("POST", 302),  # to LOGOUT_REDIRECT_URL
    "admin:password_change": staff_only(),
    "admin:password_change_done": staff_only(),
    "admin:autocomplete": staff_only(ok=403),  # without a field to complete it refuses
    "admin:jsi18n": staff_only(),
    "admin:view_on_site": staff_only(ok=404),  # no model here has get_absolute_url
    "admin:app_list": staff_only(),
    "admin/(?P<url>.*)$": staff_only(ok=404),  # the admin's catch-all for unknown admin URLs
    "admin:auth_user_password_change": staff_only(),
    **{f"admin:{model}_{view}": staff_only() for model in ADMIN_MODELS for view in ("changelist", "add")},
    **{
        f"admin:{model}_{view}": staff_only()
        for model in ADMIN_MODELS
        for view in ("history", "delete", "change")
    },
    # The unnamed "<object_id>/" pattern redirects to the change page.
    **{route: staff_only(ok=302) for route in ADMIN_MODEL_ROUTES.values()},
}
# Callback deliveries are written by the system only: the admin may look, not add or delete.
RULES["admin:reviews_callbackdelivery_add"] = staff_only(ok=403)
RULES["admin:reviews_callbackdelivery_delete"] = staff_only(ok=403)
# Golden examples are curated (and audited) on the policy pages; the admin only shows them.
RULES["admin:policies_goldenexample_add"] = staff_only(ok=403)
# Policies are created and changed on the policy team's pages (validated, audited); the admin only shows them.
RULES["admin:policies_policy_add"] = staff_only(ok=403)
RULES["admin:policies_policy_delete"] = staff_only(ok=403)
# API tokens are made (and shown once) by their owner on the audit page.
RULES["admin:audit_apitoken_add"] = staff_only(ok=403)


def urls() -> Iterator[tuple[str, str, list[str]]]:
    """(rule key, route, kwarg names) for every pattern of the URL conf, included ones too."""

    def walk(patterns: list[Any], prefix: str, namespace: str) -> Iterator[tuple[str, str, list[str]]]:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                inner = ":".join(n for n in (namespace, pattern.namespace) if n)
                yield from walk(pattern.url_patterns, route, inner)
            elif isinstance(pattern, URLPattern):
                key = ":".join(n for n in (namespace, pattern.name) if n) if pattern.name else route
                names = list(pattern.pattern.regex.groupindex)
                yield key, route, names

    yield from walk(get_resolver().url_patterns, "", "")


def test_every_url_has_a_rule() -> None:
    missing = [(key, route) for key, route, _ in urls() if key not in RULES]
    assert not missing, "\n".join(
        [
            "These URLs have no row in RULES (tests/test_authorization_matrix.py): add one saying what "
            f"each role ({', '.join(ROLES)}) gets, so nobody ships a page without deciding who may open it:",
            *(f"  {key!r}  (route {route!r})" for key, route in missing),
        ]
    )
    keys = {key for key, _, _ in urls()}
    stale = sorted(set(RULES) - keys)
    assert not stale, f"RULES has rows for URLs that no longer exist: {stale}"
    for key, rule in RULES.items():
        assert set(rule.outcomes) == set(ROLES), f"RULES[{key!r}] must give an outcome for every role"


@dataclass
class World:
    """Real objects the URL kwargs point at, and a way to act as each role."""

    users: dict[str, User]
    source: ApiClient
    other_source: ApiClient
    case: Case
    objects: dict[str, Any]

    def url_kwargs(self, key: str, names: list[str]) -> dict[str, str]:
        values: dict[str, str] = {}
        for name in names:
            if name == "case_id":
                values[name] = str(self.case.pk)
            elif name == "external_id":
                values[name] = self.case.item.external_id
            elif name == "object_id":
                values[name] = str(self.admin_object(key).pk)
            elif name == "id":  # the admin's user password page
                values[name] = str(self.users["moderator"].pk)
            elif name == "content_type_id":
                values[name] = str(ContentType.objects.get_for_model(Policy).pk)
            elif name == "app_label":
                values[name] = "moderation"
            elif name == "slug":
                values[name] = self.case.policy_version.policy.slug
            elif name == "number":
                values[name] = str(self.objects["draft"].number)
            elif name == "example_id":
                values[name] = str(self.objects["policies_goldenexample"].pk)
            elif name == "action":
                values[name] = "accept"
            elif name == "run_id":
                values[name] = str(self.objects["run"].pk)
            elif name == "suspension_id":
                values[name] = str(self.objects["suspension"].pk)
            elif name == "token_id":
                values[name] = str(self.objects["audit_apitoken"].pk)
            elif name == "url":
                values[name] = "no/such/page/"
            else:
                raise AssertionError(f"url_kwargs does not know where to find a {name!r} for {key}")
        return values

    def admin_object(self, key: str) -> Any:
        if key == "admin:view_on_site":
            return self.objects["policies_policy"]
        [model] = [m for m in ADMIN_MODELS if key.startswith(f"admin:{m}_") or ADMIN_MODEL_ROUTES[m] == key]
        return self.objects[model]

    def request(self, role: str, rule: Rule, path: str) -> Any:
        client = Client()
        headers: dict[str, str] = {}
        if role in self.users:
            client.force_login(self.users[role])
        elif role == "source":
            headers["Authorization"] = f"Bearer {self.source.api_key}"
        elif role == "other_source":
            headers["Authorization"] = f"Bearer {self.other_source.api_key}"
        elif role in TOKENS:
            headers["Authorization"] = f"Bearer {self.objects[role]}"
        if rule.method == "GET":
            return client.get(path, rule.data, headers=headers)
        if path.startswith("/api/"):
            return client.post(path, rule.data, content_type="application/json", headers=headers)
        return client.post(path, rule.data, headers=headers)


def outcome(response: Any) -> int | str:
    if response.status_code == 302:
        location = response["Location"]
        if location.startswith("/admin/login/"):
            return ADMIN_LOGIN
        if location.startswith("/login/?next="):
            return LOGIN
    return int(response.status_code)


@pytest.fixture
def world(policy: Policy) -> World:
    users = {
        "no_group": user_create("nobody"),
        "moderator": user_create("mona", Role.MODERATOR, grants=[policy]),
        "senior_moderator": user_create("sena", Role.SENIOR_MODERATOR, grants=[policy]),
        "policy_editor": user_create("pete", Role.POLICY_EDITOR),
        "auditor": user_create("audrey", Role.AUDITOR),
        "admin": user_create("ada", Role.ADMIN),
    }
    User.objects.filter(pk=users["admin"].pk).update(is_staff=True, is_superuser=True)
    users["admin"].refresh_from_db()
    source = source_api_client("acme", [policy])
    other = source_api_client("rival", [policy])
    [case] = cases_create(policy, source.source)
    objects: dict[str, Any] = {
        "auth_group": users["moderator"].groups.get(),
        "auth_user": users["moderator"],
        "moderation_source": source.source,
        "policies_policy": policy,
        "reviews_queuegrant": QueueGrant.objects.filter(user=users["moderator"]).get(),
        "policies_goldenexample": GoldenExample.objects.create(
            policy=policy, text="buy now", text_hash="0" * 64, expected_label="violates", origin="import"
        ),
    }
    objects["audit_apitoken"], objects["auditor_token"] = api_token_create(user=users["auditor"], name="ci")
    _, objects["moderator_token"] = api_token_create(user=users["moderator"], name="not an auditor")
    objects["policies_statementofreasonsmapping"] = StatementOfReasonsMapping.objects.create(policy=policy)
    objects["draft"] = policy_draft_create(policy=policy, author=users["policy_editor"])
    objects["suspension"] = AutoClearSuspension.objects.create(
        policy_version=case.policy_version,
        tier="funnel",
        reason="QA found misses",
        qa_samples=2,
        qa_misses=1,
        miss_rate_upper_bound=0.9,
    )
    objects["run"] = evaluation_run_create(
        version=objects["draft"],
        actor=users["policy_editor"],
        config=engine_config_for("http://127.0.0.1:9"),
        examples=[ExampleIn(text="buy now", expected_label="violates")],
        enqueue=False,
    )
    [decided] = cases_create(policy, source.source, state=Case.State.DECIDED)
    decision = Decision.objects.create(
        case=decided, moderator=users["moderator"], action="confirm", final_label="violates"
    )
    objects["reviews_callbackdelivery"] = CallbackDelivery.objects.create(
        decision=decision, url="https://platform.example/hook", attempt=1
    )
    return World(users=users, source=source, other_source=other, case=case, objects=objects)


def test_every_role_gets_exactly_what_the_rules_say_on_every_url(world: World) -> None:
    mismatches: list[str] = []
    checked = 0
    for key, route, names in urls():
        rule = RULES.get(key)
        if rule is None:
            mismatches.append(f"{key} ({route}): no row in RULES")
            continue
        path = "/" + route_path(route, world.url_kwargs(key, names))
        for role in ROLES:
            with transaction.atomic():
                got = outcome(world.request(role, rule, path))
                transaction.set_rollback(True)
            checked += 1
            if got != rule.outcomes[role]:
                mismatches.append(
                    f"{key} {rule.method} {path} as {role}: expected {rule.outcomes[role]}, got {got}"
                )
    assert not mismatches, f"{len(mismatches)} of {checked} requests disagree with RULES:\n" + "\n".join(
        mismatches
    )


def route_path(route: str, kwargs: dict[str, str]) -> str:
    """A concrete path for a route string (path converters or the admin's regexes)."""
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: kwargs[m.group(1)], route)
    path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: kwargs[m.group(1)], path)
    return path.replace("^", "").replace("$", "")
