"""schemathesis against the OpenAPI document the running server publishes, every operation in it.

Valid and invalid requests (bodies, path parameters, headers) are generated from the document, sent to a
live server with a real source's API key, and each answer must be documented: no 5xx, a documented status
code and content type, a body matching the documented schema. Deterministic (derandomized, no example
database) and bounded (EXAMPLES per operation and mode), so it runs the same in CI every time.
"""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from pytest_django.live_server_helper import LiveServer
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts.roles import Role
from audit.tokens import api_token_create
from inference_worker.services import cases_triage
from inference_worker.testing.fixtures import engine_config_for
from moderation import services
from policies.models import Policy
from reviews import services as reviews
from reviews.models import Decision
from reviews.services import DecisionIn
from tests.reviews.helpers import user_create

pytestmark = [pytest.mark.hostile, pytest.mark.django_db(transaction=True)]

EXAMPLES = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def fuzz(
    operation: Any,
    mode: GenerationMode,
    *,
    base_url: str,
    headers: dict[str, str],
    sent: Counter[str],
    statuses: Counter[int],
) -> None:
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def exchange(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers)
        # The test replaces the generated Authorization with a real credential, so a case whose only invalid
        # part was that header is a valid request: expecting it to be refused would be wrong.
        invalid = {loc for loc, info in case.meta.components.items() if info.mode is GenerationMode.NEGATIVE}
        # A generated query parameter whose value does not serialise (an empty list, None) is not sent at
        # all: if that was the invalid part, the request that went out is valid.
        sent_query = set(parse_qs(urlsplit(response.request.url).query, keep_blank_values=True))
        if set(case.query or {}) - sent_query:
            invalid.discard(ParameterLocation.QUERY)
        checks = [*CHECKS, negative_data_rejection] if invalid - {ParameterLocation.HEADER} else CHECKS
        sent[f"{operation.label} {mode.value}"] += 1
        statuses[response.status_code] += 1
        case.validate_response(response, checks=checks, headers=headers)

    exchange()


def credentials_for(operation: Any, by_scheme: dict[str, dict[str, str]]) -> dict[str, str]:
    """The headers that authenticate `operation`, by the security scheme the document names for it."""
    schemes = {name for requirement in operation.definition.raw.get("security", []) for name in requirement}
    unknown = schemes - set(by_scheme)
    assert not unknown, (
        f"{operation.label} is secured by {sorted(unknown)}: give the fuzz test a real credential for it "
        "(by_scheme in test_every_generated_request_gets_a_documented_answer)"
    )
    return {k: v for name in sorted(schemes) for k, v in by_scheme[name].items()}


def decided_item(created: services.SourceCreated, policy: Policy) -> str:
    """An item of the source, triaged without an engine and decided by a moderator: appealable."""
    [ingested] = services.items_ingest(
        source=created.source, items=[services.ItemIn(external_id="known-item", text="buy now")]
    )
    cases_triage(case_ids=ingested.case_ids, config=engine_config_for(""))
    moderator = user_create("mona", Role.MODERATOR, grants=[policy])
    case = reviews.case_claim_next(moderator=moderator)
    assert case is not None
    reviews.case_decide(
        case=case,
        moderator=moderator,
        decision=DecisionIn(action=Decision.Action.OVERTURN, final_label="violates", rule_ids=("SP1",)),
    )
    return ingested.external_id


def test_every_generated_request_gets_a_documented_answer(live_server: LiveServer, policy: Policy) -> None:
    # A source that does not require signatures, with a budget no fuzzing run reaches: 429 stays rare.
    created = services.source_create(
        name="Fuzzer", slug="fuzzer", policies=[policy], rate_limit_per_minute=1_000_000
    )
    auth = {"Authorization": f"Bearer {created.api_key}"}
    _, auditor_token = api_token_create(user=user_create("audrey", Role.AUDITOR), name="fuzzer")
    by_scheme = {"SourceKeyAuth": auth, "UserTokenAuth": {"Authorization": f"Bearer {auditor_token}"}}
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/v1/openapi.json")
    sent: Counter[str] = Counter()
    statuses: Counter[int] = Counter()

    results = list(schema.get_all_operations())
    assert not [r.err() for r in results if isinstance(r, Err)], "the document has an invalid operation"
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert {op.label for op in operations} >= {
        "POST /api/v1/items",
        "GET /api/v1/items/{external_id}",
        "POST /api/v1/items/{external_id}/appeals",
        "GET /api/v1/audit/events",
        "GET /api/v1/audit/decisions",
        "GET /api/v1/audit/statements",
    }
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            headers = credentials_for(operation, by_scheme)
            fuzz(operation, mode, base_url=live_server.url, headers=headers, sent=sent, statuses=statuses)

    # The success bodies of reads and appeals, on an item that exists and was decided.
    known = decided_item(created, policy)
    by_label = {op.label: op for op in operations}
    status = by_label["GET /api/v1/items/{external_id}"].Case(path_parameters={"external_id": known})
    appeal = by_label["POST /api/v1/items/{external_id}/appeals"].Case(
        path_parameters={"external_id": known}, body={"reason": "the user disagrees"}
    )
    for case, expected in [(status, 200), (appeal, 201), (appeal, 200)]:
        response = case.call(base_url=live_server.url, headers=auth)
        assert response.status_code == expected, (case.operation.label, response.text)
        case.validate_response(response, checks=CHECKS, headers=auth)

    # Without the key every operation refuses, with the documented 401 body.
    for operation in operations:
        path_parameters = {"external_id": "x"}
        if operation.method.upper() == "POST":
            case = operation.Case(path_parameters=path_parameters, body={"reason": "r"})
        else:
            case = operation.Case(path_parameters=path_parameters)
        response = case.call(base_url=live_server.url)
        assert response.status_code == 401, (operation.label, response.text)
        case.validate_response(response, checks=[*CHECKS, ignored_auth])

    total = sum(sent.values())
    print(f"schemathesis: {total} generated requests over {len(operations)} operations; statuses {statuses}")
    assert all(count > 0 for count in sent.values())
    assert statuses[200] > 0 and statuses[400] > 0
