"""The golden set of a policy: curation (accept, edit, reject), duplicate checks, and import from files.

Candidates arrive from moderator decisions (reviews.services) and from imports; only accepted examples
are measured by evaluation runs. Two accepted examples never share a normalised text (PostgreSQL
enforces it too: ``golden_accepted_text_unique``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.paginator import Page, Paginator
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from audit import services as audit
from policies.models import GoldenExample, Label, Policy, PolicyVersion

GOLDEN_PAGE_SIZE = 50
IMPORT_STATUSES = (GoldenExample.Status.CANDIDATE, GoldenExample.Status.ACCEPTED)
_VIOLATES = {"violation", "violates", "violating", "unsafe", "1", "true", "yes"}
_SAFE = {"safe", "no violation", "not violating", "0", "false", "no"}
_LABEL_FIELDS = ("expected_label", "label", "expected")
_CATEGORY_FIELDS = ("category", "type")
RULE_IDS_MAX = 20
CATEGORY_MAX_CHARS = 100


class GoldenRefused(Exception):
    """A curation step that would break the golden set (duplicate, unknown rule id, bad label)."""


def text_hash(text: str) -> str:
    """Of the normalised text (whitespace collapsed, case folded): duplicates are found by it."""
    return hashlib.sha256(" ".join(text.split()).casefold().encode()).hexdigest()


def policy_rule_ids(policy: Policy) -> list[str]:
    """The rule ids golden examples may expect: the active version's, else the latest version's."""
    version = (
        policy.versions.filter(status=PolicyVersion.Status.ACTIVE).first()
        or policy.versions.order_by("-number").first()
    )
    return list(version.rule_ids) if version is not None else []


def label_parse(value: object) -> str:
    """violates / safe from the spellings files use (violation, unsafe, 1, safe, 0...)."""
    if isinstance(value, bool):  # JSON true / false
        value = int(value)
    text = "" if value is None else str(value).strip().casefold()
    if text in _VIOLATES:
        return Label.VIOLATES
    if text in _SAFE:
        return Label.SAFE
    raise GoldenRefused(f"unknown label {str(value)[:40]!r}: expected violation / safe (or 1 / 0)")


def rule_ids_parse(value: object, allowed: Sequence[str]) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        raw = [str(v) for v in value]
    else:
        raw = str(value).replace(";", ",").replace(" ", ",").split(",")
    ids = list(dict.fromkeys(r.strip().upper() for r in raw if r.strip()))
    if len(ids) > RULE_IDS_MAX:
        raise GoldenRefused(f"more than {RULE_IDS_MAX} rule ids")
    unknown = [r for r in ids if r not in allowed]
    if unknown:
        raise GoldenRefused(
            f"rule ids the policy does not define: {', '.join(unknown)}"
            + (f" (it defines {', '.join(allowed)})" if allowed else " (it defines none)")
        )
    return ids


# --- reads -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldenFilters:
    status: str = ""
    origin: str = ""
    label: str = ""
    conflicts: bool = False


def golden_examples(policy: Policy, filters: GoldenFilters) -> QuerySet[GoldenExample]:
    """The policy's examples, newest first, each marked when an accepted example has the same text."""
    accepted_twin = GoldenExample.objects.filter(
        policy=policy, status=GoldenExample.Status.ACCEPTED, text_hash=OuterRef("text_hash")
    ).exclude(pk=OuterRef("pk"))
    # Golden-set conflicts: the same text with another label (say a decision, then an appeal ruling that
    # overturned it). Rejected examples take no part. The latest label supersedes the earlier ones; a
    # computed flag, nothing is deleted: curators accept the superseding one and reject the others.
    other_label = (
        GoldenExample.objects.filter(policy=policy, text_hash=OuterRef("text_hash"))
        .exclude(status=GoldenExample.Status.REJECTED)
        .exclude(expected_label=OuterRef("expected_label"))
    )
    later = Q(created_at__gt=OuterRef("created_at")) | Q(
        created_at=OuterRef("created_at"), pk__gt=OuterRef("pk")
    )
    examples = (
        GoldenExample.objects.filter(policy=policy)
        .select_related("decision__moderator", "decision__case", "created_by", "curated_by")
        .annotate(
            duplicate_of_accepted=Exists(accepted_twin),
            conflicting=Exists(other_label),
            superseded=Exists(other_label.filter(later)),
        )
    )
    if filters.status:
        examples = examples.filter(status=filters.status)
    if filters.origin:
        examples = examples.filter(origin=filters.origin)
    if filters.label:
        examples = examples.filter(expected_label=filters.label)
    if filters.conflicts:
        examples = examples.filter(conflicting=True)
    return examples.order_by("-created_at", "-id")


def golden_conflicts_count(policy: Policy) -> int:
    """How many texts of the policy's golden set carry more than one label (rejected examples aside)."""
    return (
        GoldenExample.objects.filter(policy=policy)
        .exclude(status=GoldenExample.Status.REJECTED)
        .values("text_hash")
        .annotate(labels=Count("expected_label", distinct=True))
        .filter(labels__gt=1)
        .count()
    )


def golden_page(policy: Policy, filters: GoldenFilters, page_number: str | int) -> Page[GoldenExample]:
    return Paginator(golden_examples(policy, filters), GOLDEN_PAGE_SIZE).get_page(page_number)


def golden_counts(policy: Policy) -> dict[str, int]:
    counts = {s: 0 for s in GoldenExample.Status.values}
    for status in GoldenExample.objects.filter(policy=policy).values_list("status", flat=True):
        counts[status] += 1
    return counts


def _accepted_twin(example: GoldenExample, digest: str) -> GoldenExample | None:
    return (
        GoldenExample.objects.filter(
            policy_id=example.policy_id, status=GoldenExample.Status.ACCEPTED, text_hash=digest
        )
        .exclude(pk=example.pk)
        .first()
    )


# --- curation --------------------------------------------------------------------------------------


def _curated(example: GoldenExample, actor: User) -> None:
    example.curated_by = actor
    example.curated_at = timezone.now()


@transaction.atomic
def golden_example_accept(*, example: GoldenExample, actor: User) -> GoldenExample:
    locked = GoldenExample.objects.select_for_update().get(pk=example.pk)
    Policy.objects.select_for_update().get(pk=locked.policy_id)  # serialise duplicate checks per policy
    twin = _accepted_twin(locked, locked.text_hash)
    if twin is not None:
        raise GoldenRefused(f"the same text is already accepted as example #{twin.pk}")
    before = locked.status
    locked.status = GoldenExample.Status.ACCEPTED
    _curated(locked, actor)
    locked.save(update_fields=["status", "curated_by", "curated_at"])
    audit.record("golden.accepted", actor=actor, obj=locked, payload={"status_before": before})
    return locked


@transaction.atomic
def golden_example_reject(*, example: GoldenExample, actor: User) -> GoldenExample:
    locked = GoldenExample.objects.select_for_update().get(pk=example.pk)
    before = locked.status
    locked.status = GoldenExample.Status.REJECTED
    _curated(locked, actor)
    locked.save(update_fields=["status", "curated_by", "curated_at"])
    audit.record("golden.rejected", actor=actor, obj=locked, payload={"status_before": before})
    return locked


@transaction.atomic
def golden_example_edit(
    *,
    example: GoldenExample,
    actor: User,
    text: str,
    expected_label: str,
    rule_ids: Sequence[str],
    category: str = "",
) -> GoldenExample:
    locked = GoldenExample.objects.select_for_update().select_related("policy").get(pk=example.pk)
    Policy.objects.select_for_update().get(pk=locked.policy_id)
    if not text.strip():
        raise GoldenRefused("the text is empty")
    if len(text) > settings.INGEST_MAX_TEXT_CHARS:
        raise GoldenRefused(f"the text is longer than {settings.INGEST_MAX_TEXT_CHARS} characters")
    label = label_parse(expected_label)
    ids = rule_ids_parse(list(rule_ids), policy_rule_ids(locked.policy))
    digest = text_hash(text)
    if locked.status == GoldenExample.Status.ACCEPTED:
        twin = _accepted_twin(locked, digest)
        if twin is not None:
            raise GoldenRefused(f"the same text is already accepted as example #{twin.pk}")
    before = {
        "text_hash": locked.text_hash,
        "expected_label": locked.expected_label,
        "rule_ids": list(locked.rule_ids),
        "category": locked.category,
    }
    locked.text, locked.text_hash, locked.expected_label = text, digest, label
    locked.rule_ids, locked.category = ids, category.strip()[:CATEGORY_MAX_CHARS]
    _curated(locked, actor)
    locked.save()
    audit.record(
        "golden.edited",
        actor=actor,
        obj=locked,
        payload={
            "before": before,
            "after": {
                "text_hash": digest,
                "expected_label": label,
                "rule_ids": ids,
                "category": locked.category,
            },
        },
    )
    return locked


# --- import ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportRow:
    number: int  # 1-based: the line of a JSONL file, the data row of a CSV (header not counted)
    text: str = ""
    expected_label: str = ""
    rule_ids: list[str] = field(default_factory=list)
    category: str = ""
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "text": self.text,
            "expected_label": self.expected_label,
            "rule_ids": self.rule_ids,
            "category": self.category,
            "error": self.error,
        }


@dataclass(frozen=True)
class ImportPreview:
    rows: list[ImportRow]
    error: str = ""  # the whole file is refused

    @property
    def valid(self) -> list[ImportRow]:
        return [r for r in self.rows if not r.error]

    @property
    def invalid(self) -> list[ImportRow]:
        return [r for r in self.rows if r.error]


def _records(name: str, data: bytes) -> list[tuple[int, dict[str, Any] | None, str]]:
    """(row number, fields, error) per row of a CSV or JSONL file."""
    text = data.decode("utf-8-sig")
    if name.lower().endswith((".jsonl", ".ndjson", ".json")):
        records: list[tuple[int, dict[str, Any] | None, str]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                records.append((number, None, "not valid JSON"))
                continue
            if not isinstance(value, dict):
                records.append((number, None, "not a JSON object"))
                continue
            records.append((number, value, ""))
        return records
    if not name.lower().endswith((".csv", ".txt")):
        raise GoldenRefused("unknown file type: upload a .csv or a .jsonl file")
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "text" not in [f.strip() for f in reader.fieldnames]:
        raise GoldenRefused("the CSV has no header row with a 'text' column")
    return [
        (number, {(k or "").strip(): v for k, v in row.items()}, "")
        for number, row in enumerate(reader, start=1)
    ]


def _first_present(fields: dict[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        if fields.get(name) not in (None, ""):
            return fields[name]
    return None


def golden_import_preview(*, policy: Policy, name: str, data: bytes) -> ImportPreview:
    """Parse an upload; every row is valid or says why not. Nothing is stored."""
    if len(data) > settings.GOLDEN_IMPORT_MAX_BYTES:
        return ImportPreview([], f"the file is larger than {settings.GOLDEN_IMPORT_MAX_BYTES} bytes")
    try:
        records = _records(name, data)
    except UnicodeDecodeError:
        return ImportPreview([], "the file is not UTF-8 text")
    except (GoldenRefused, csv.Error) as exc:
        return ImportPreview([], str(exc))
    if not records:
        return ImportPreview([], "the file has no rows")
    if len(records) > settings.GOLDEN_IMPORT_MAX_ROWS:
        return ImportPreview(
            [], f"the file has {len(records)} rows; at most {settings.GOLDEN_IMPORT_MAX_ROWS}"
        )
    allowed = policy_rule_ids(policy)
    accepted = dict(
        GoldenExample.objects.filter(policy=policy, status=GoldenExample.Status.ACCEPTED).values_list(
            "text_hash", "pk"
        )
    )
    seen: dict[str, int] = {}
    rows = []
    for number, fields, error in records:
        if fields is None:
            rows.append(ImportRow(number, error=error))
            continue
        rows.append(_import_row(number, fields, allowed, accepted, seen))
    return ImportPreview(rows)


def _import_row(
    number: int,
    fields: dict[str, Any],
    allowed: Sequence[str],
    accepted: dict[str, int],
    seen: dict[str, int],
) -> ImportRow:
    text = fields.get("text")
    if not isinstance(text, str) or not text.strip():
        return ImportRow(number, error="missing text")
    if len(text) > settings.INGEST_MAX_TEXT_CHARS:
        return ImportRow(number, error=f"text longer than {settings.INGEST_MAX_TEXT_CHARS} characters")
    raw_label = _first_present(fields, _LABEL_FIELDS)
    if raw_label is None:
        return ImportRow(number, text=text, error="missing label (violation / safe, or 1 / 0)")
    category = str(_first_present(fields, _CATEGORY_FIELDS) or "").strip()[:CATEGORY_MAX_CHARS]
    try:
        label = label_parse(raw_label)
        ids = rule_ids_parse(fields.get("rule_ids"), allowed)
    except GoldenRefused as exc:
        return ImportRow(number, text=text, error=str(exc))
    digest = text_hash(text)
    if digest in accepted:
        return ImportRow(number, text=text, error=f"duplicate of accepted example #{accepted[digest]}")
    if digest in seen:
        return ImportRow(number, text=text, error=f"duplicate of row {seen[digest]}")
    seen[digest] = number
    return ImportRow(number, text, label, ids, category)


@transaction.atomic
def golden_import(
    *, policy: Policy, actor: User, rows: Sequence[ImportRow], status: str, file_name: str
) -> list[GoldenExample]:
    """Store the valid rows of a preview as candidates or accepted examples; audited."""
    if status not in IMPORT_STATUSES:
        raise GoldenRefused("import as candidates or as accepted examples")
    Policy.objects.select_for_update().get(pk=policy.pk)
    accepted = set(
        GoldenExample.objects.filter(policy=policy, status=GoldenExample.Status.ACCEPTED).values_list(
            "text_hash", flat=True
        )
    )
    now = timezone.now()
    examples = []
    for row in rows:
        if row.error:
            continue
        digest = text_hash(row.text)
        if status == GoldenExample.Status.ACCEPTED and digest in accepted:
            continue  # accepted by someone else since the preview
        if status == GoldenExample.Status.ACCEPTED:
            accepted.add(digest)
        examples.append(
            GoldenExample(
                policy=policy,
                text=row.text,
                text_hash=digest,
                expected_label=row.expected_label,
                rule_ids=row.rule_ids,
                category=row.category,
                origin=GoldenExample.Origin.IMPORT,
                status=status,
                created_by=actor,
                curated_by=actor if status == GoldenExample.Status.ACCEPTED else None,
                curated_at=now if status == GoldenExample.Status.ACCEPTED else None,
            )
        )
    created = GoldenExample.objects.bulk_create(examples)
    audit.record(
        "golden.import",
        actor=actor,
        obj=policy,
        payload={"file": file_name[:200], "status": status, "imported": len(created), "rows": len(rows)},
    )
    audit.record_many(
        "golden.imported",
        actor=actor,
        objects=[(e, {"status": status, "file": file_name[:200]}) for e in created],
    )
    return created
