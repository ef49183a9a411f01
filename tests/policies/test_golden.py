"""The golden set: candidates from decisions with their provenance, curation, duplicates, and file imports."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from audit.models import AuditEvent
from moderation.models import Case
from policies import golden
from policies.models import GoldenExample, Policy
from reviews import services
from reviews.models import Decision
from reviews.services import DecisionIn
from tests.conftest import CasesFactory
from tests.policies.evaluation_helpers import golden_accepted


@pytest.fixture
def editor_client(client: Client, policy_editor: User) -> Client:
    client.force_login(policy_editor)
    return client


def decided_candidate(queued_cases: CasesFactory, moderator: User) -> GoldenExample:
    (case,) = queued_cases(1, text="cheap zorblax, message me")
    claimed = services.case_claim_next(moderator=moderator)
    assert claimed is not None and claimed.pk == case.pk
    services.case_decide(
        case=Case.objects.get(pk=case.pk),
        moderator=moderator,
        decision=DecisionIn(action=Decision.Action.CONFIRM, rule_ids=["SP1"]),
    )
    return GoldenExample.objects.get(decision__case=case)


def test_a_decision_arrives_as_a_candidate_showing_its_provenance(
    editor_client: Client, policy: Policy, queued_cases: CasesFactory, moderator: User
) -> None:
    candidate = decided_candidate(queued_cases, moderator)
    assert candidate.status == GoldenExample.Status.CANDIDATE
    page = editor_client.get("/policies/spam/golden/?status=candidate").content.decode()
    assert f"decision #{candidate.decision_id} by mona on case" in page
    assert f'href="/cases/{candidate.decision.case_id}/"' in page  # type: ignore[union-attr]


def test_curators_accept_and_reject_with_an_audit_trail(
    editor_client: Client, policy: Policy, queued_cases: CasesFactory, moderator: User
) -> None:
    candidate = decided_candidate(queued_cases, moderator)
    response = editor_client.post(
        f"/policies/spam/golden/{candidate.pk}/accept", headers={"HX-Request": "true"}
    )
    assert response.status_code == 200 and "accepted" in response.content.decode()
    candidate.refresh_from_db()
    assert candidate.status == GoldenExample.Status.ACCEPTED and candidate.curated_by is not None
    editor_client.post(f"/policies/spam/golden/{candidate.pk}/reject")
    candidate.refresh_from_db()
    assert candidate.status == GoldenExample.Status.REJECTED
    actions = list(
        AuditEvent.objects.filter(object_type="reviews.goldenexample")
        .order_by("seq")
        .values_list("action", flat=True)
    )
    assert actions == ["golden.accepted", "golden.rejected"]


def test_it_refuses_to_accept_a_duplicate_of_an_accepted_example_and_flags_it(
    editor_client: Client, policy: Policy
) -> None:
    original = golden_accepted(policy, "Buy   ZORBLAX now")
    twin = GoldenExample.objects.create(
        policy=policy,
        text="buy zorblax NOW",
        text_hash=golden.text_hash("buy zorblax NOW"),
        expected_label="violates",
        origin=GoldenExample.Origin.IMPORT,
    )
    page = editor_client.get("/policies/spam/golden/").content.decode()
    assert "duplicate of an accepted example" in page
    response = editor_client.post(f"/policies/spam/golden/{twin.pk}/accept", headers={"HX-Request": "true"})
    assert response.status_code == 409
    assert f"already accepted as example #{original.pk}" in response.content.decode()
    twin.refresh_from_db()
    assert twin.status == GoldenExample.Status.CANDIDATE


def test_an_edit_validates_rule_ids_recomputes_the_hash_and_is_audited(
    editor_client: Client, policy: Policy, policy_editor: User
) -> None:
    example = golden_accepted(policy, "old text")
    response = editor_client.post(
        f"/policies/spam/golden/{example.pk}/",
        {"text": "new text", "expected_label": "violates", "rule_ids": "SP1, SP9", "category": ""},
    )
    assert response.status_code == 400
    assert "rule ids the policy does not define: SP9" in response.content.decode()
    response = editor_client.post(
        f"/policies/spam/golden/{example.pk}/",
        {"text": "New  Text", "expected_label": "safe", "rule_ids": "sp2", "category": "links"},
    )
    assert response.status_code == 302
    example.refresh_from_db()
    assert (example.text, example.expected_label, example.rule_ids, example.category) == (
        "New  Text",
        "safe",
        ["SP2"],
        "links",
    )
    assert example.text_hash == golden.text_hash("new text")
    event = AuditEvent.objects.get(action="golden.edited")
    assert event.payload["before"]["expected_label"] == "violates" and event.payload["after"]["rule_ids"] == [
        "SP2"
    ]


def test_an_edit_cannot_turn_an_accepted_example_into_a_duplicate(
    policy: Policy, policy_editor: User
) -> None:
    golden_accepted(policy, "first")
    second = golden_accepted(policy, "second")
    with pytest.raises(golden.GoldenRefused, match="already accepted"):
        golden.golden_example_edit(
            example=second, actor=policy_editor, text="FIRST", expected_label="violates", rule_ids=[]
        )


def test_the_list_filters_and_paginates(editor_client: Client, policy: Policy) -> None:
    for n in range(golden.GOLDEN_PAGE_SIZE + 5):
        golden_accepted(policy, f"safe text {n}", "safe")
    golden_accepted(policy, "a violating one", "violates")
    page = editor_client.get("/policies/spam/golden/?label=violates").content.decode()
    assert "a violating one" in page and "safe text 1" not in page
    first = editor_client.get("/policies/spam/golden/?label=safe").content.decode()
    assert "Page 1 of 2" in first and "label=safe&amp;page=2" in first
    second = editor_client.get("/policies/spam/golden/?label=safe&page=2", headers={"HX-Request": "true"})
    assert 'id="golden-table"' in second.content.decode() and "<html" not in second.content.decode()


CSV = (
    "text,label,rule_ids,category\n"
    "buy zorblax now,violation,SP1,promo\n"
    ",safe,,\n"
    "hello friend,maybe,,\n"
    "cheap links,1,SP7,\n"
    "an accepted text,0,,\n"
    "buy ZORBLAX   now,1,,\n"
    "nice weather,0,,chat\n"
)


def upload(client: Client, name: str, content: bytes) -> str:
    response = client.post("/policies/spam/golden/import", {"file": SimpleUploadedFile(name, content)})
    return f"{response.status_code}\n{response.content.decode()}"


def test_an_import_previews_every_row_error_and_imports_only_the_valid_rows(
    editor_client: Client, policy: Policy
) -> None:
    accepted = golden_accepted(policy, "An accepted text", "safe")
    page = upload(editor_client, "set.csv", CSV.encode())
    assert page.startswith("200")
    assert "2 valid rows, 5 with errors" in page
    for number, reason in [
        (2, "missing text"),
        (3, "unknown label &#x27;maybe&#x27;"),
        (4, "rule ids the policy does not define: SP7"),
        (5, f"duplicate of accepted example #{accepted.pk}"),
        (6, "duplicate of row 1"),
    ]:
        assert f'<td>{number}</td><td class="error">{reason}' in page, reason
    assert GoldenExample.objects.count() == 1  # a preview stores nothing
    response = editor_client.post("/policies/spam/golden/import/confirm", {"status": "accepted"})
    assert response.status_code == 302
    imported = GoldenExample.objects.filter(origin=GoldenExample.Origin.IMPORT).exclude(pk=accepted.pk)
    assert sorted(imported.values_list("text", "expected_label", "status", "category")) == [
        ("buy zorblax now", "violates", "accepted", "promo"),
        ("nice weather", "safe", "accepted", "chat"),
    ]
    assert AuditEvent.objects.get(action="golden.import").payload["imported"] == 2
    assert AuditEvent.objects.filter(action="golden.imported").count() == 2


def test_a_jsonl_import_reads_each_line_and_says_which_lines_are_broken(
    editor_client: Client, policy: Policy
) -> None:
    lines = [
        json.dumps({"text": "zorblax here", "label": 1, "rule_ids": ["SP1"]}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"text": "fine text", "expected_label": "safe"}),
    ]
    page = upload(editor_client, "set.jsonl", "\n".join(lines).encode())
    assert "2 valid rows, 2 with errors" in page
    assert '<td>2</td><td class="error">not valid JSON' in page
    assert '<td>3</td><td class="error">not a JSON object' in page
    editor_client.post("/policies/spam/golden/import/confirm", {"status": "candidate"})
    assert set(GoldenExample.objects.values_list("status", flat=True)) == {"candidate"}
    assert GoldenExample.objects.count() == 2


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("set.csv", b"", "The submitted file is empty"),
        ("set.csv", b"text,label\n", "the file has no rows"),
        ("set.csv", b"words,label\nx,1\n", "no header row with a &#x27;text&#x27; column"),
        ("set.csv", b"text,label\n\xff\xfe,1\n", "not UTF-8"),
        ("set.xlsx", b"PK...", "upload a .csv or a .jsonl file"),
    ],
)
def test_it_refuses_files_it_cannot_read_with_a_clear_error(
    editor_client: Client, policy: Policy, name: str, content: bytes, message: str
) -> None:
    page = upload(editor_client, name, content)
    assert page.startswith("400") and message in page


def test_it_refuses_files_over_the_size_and_row_limits(
    editor_client: Client, policy: Policy, settings: object
) -> None:
    settings.GOLDEN_IMPORT_MAX_ROWS = 3  # type: ignore[attr-defined]
    page = upload(editor_client, "set.csv", b"text,label\n" + b"".join(b"t%d,1\n" % n for n in range(4)))
    assert page.startswith("400") and "the file has 4 rows; at most 3" in page
    settings.GOLDEN_IMPORT_MAX_BYTES = 10  # type: ignore[attr-defined]
    page = upload(editor_client, "set.csv", b"text,label\nlong enough,1\n")
    assert page.startswith("400") and "larger than 10 bytes" in page


def test_confirming_without_a_preview_imports_nothing(editor_client: Client, policy: Policy) -> None:
    response = editor_client.post("/policies/spam/golden/import/confirm", {"status": "accepted"}, follow=True)
    assert "Nothing to import" in response.content.decode()
    assert not GoldenExample.objects.exists()


def test_without_htmx_a_refused_accept_shows_the_list_with_the_reason(
    editor_client: Client, policy: Policy
) -> None:
    golden_accepted(policy, "same text")
    twin = GoldenExample.objects.create(
        policy=policy,
        text="SAME text",
        text_hash=golden.text_hash("same text"),
        expected_label="violates",
        origin=GoldenExample.Origin.IMPORT,
    )
    response = editor_client.post(f"/policies/spam/golden/{twin.pk}/accept")
    assert response.status_code == 409
    assert f"Example #{twin.pk}: the same text is already accepted" in response.content.decode()


LABEL_SPELLINGS = [
    ("violation", "violates"),
    ("Unsafe", "violates"),
    (1, "violates"),
    (True, "violates"),
    ("1", "violates"),
    ("safe", "safe"),
    ("no violation", "safe"),
    (0, "safe"),
    (False, "safe"),
    ("0", "safe"),
]


@pytest.mark.parametrize(("raw", "label"), LABEL_SPELLINGS)
def test_it_reads_the_label_spellings_files_use(raw: object, label: str) -> None:
    assert golden.label_parse(raw) == label


@pytest.mark.parametrize("raw", [None, "", "maybe", 2, "0.5"])
def test_it_refuses_labels_it_does_not_know(raw: object) -> None:
    with pytest.raises(golden.GoldenRefused, match="unknown label"):
        golden.label_parse(raw)


def test_a_later_appeal_ruling_with_another_label_shows_as_a_conflict_and_supersedes(
    editor_client: Client,
    policy: Policy,
    queued_cases: CasesFactory,
    moderator: User,
    senior_moderator: User,
) -> None:
    first = decided_candidate(queued_cases, moderator)
    assert first.decision is not None
    appeal, _ = services.appeal_open(case=first.decision.case, reason="it was a joke", actor=None)
    Case.objects.filter(pk=appeal.pk).update(state=Case.State.APPEALED, verdict="violates")
    claimed = services.case_claim_next(moderator=senior_moderator)
    assert claimed is not None and claimed.pk == appeal.pk
    services.case_decide(
        case=claimed,
        moderator=senior_moderator,
        decision=DecisionIn(action=Decision.Action.OVERTURN, final_label="safe"),
    )
    ruling = GoldenExample.objects.get(decision__case=appeal)
    assert ruling.text_hash == first.text_hash and ruling.expected_label == "safe"

    flags = {
        e.pk: (e.conflicting, e.superseded)  # type: ignore[attr-defined]  # annotations
        for e in golden.golden_examples(policy, golden.GoldenFilters())
    }
    assert flags == {first.pk: (True, True), ruling.pk: (True, False)}
    assert golden.golden_conflicts_count(policy) == 1
    page = editor_client.get("/policies/spam/golden/").content.decode()
    assert "1 text carries conflicting labels" in page
    row = page.split(f'id="golden-{ruling.pk}"')[1].split("</tr>")[0]
    assert "supersedes the earlier label (appeal ruling)" in row
    row = page.split(f'id="golden-{first.pk}"')[1].split("</tr>")[0]
    assert "superseded by a later ruling" in row
    only = editor_client.get("/policies/spam/golden/?conflicts=on").content.decode()
    assert f'id="golden-{ruling.pk}"' in only

    # Rejecting the superseded one ends the conflict; nothing was deleted.
    golden.golden_example_reject(example=first, actor=User.objects.get(username="pete"))
    assert golden.golden_conflicts_count(policy) == 0
    assert GoldenExample.objects.filter(pk=first.pk).exists()
