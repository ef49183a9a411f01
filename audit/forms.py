"""Forms of the audit pages and the export API: time ranges, exports, tokens, audit log filters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import forms

from audit.exports import ExportRequest, Format, Kind
from audit.selectors import AuditFilters
from policies.models import Policy
from reviews.models import Decision

ACTION_NAME = r"^[a-z_]+(\.[a-z_]+)*$"


class TimeRangeForm(forms.Form):
    """A half-open time range [since, until), compared in UTC."""

    since = forms.DateTimeField(
        required=False, label="From", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    until = forms.DateTimeField(
        required=False, label="Until (excluded)", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )

    def _clean_instant(self, name: str) -> datetime | None:
        value: datetime | None = self.cleaned_data.get(name)
        if value is None:
            return None
        # PostgreSQL refuses offsets beyond +/-15:59 and years before 1: compare in UTC, and say so.
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("Out of range: give a date between the years 1 and 9999.") from None

    def clean_since(self) -> datetime | None:
        return self._clean_instant("since")

    def clean_until(self) -> datetime | None:
        return self._clean_instant("until")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since and until and since >= until:
            self.add_error("until", "Must be later than the start of the range.")
        return data


class ExportForm(TimeRangeForm):
    """What to export; the same checks serve the audit page and the export API."""

    kind = forms.ChoiceField(choices=Kind.choices, initial=Kind.EVENTS)
    format = forms.ChoiceField(choices=Format.choices, initial=Format.CSV)
    policy = forms.ModelChoiceField(
        queryset=Policy.objects.order_by("slug"),
        to_field_name="slug",
        required=False,
        empty_label="All policies",
    )
    actor = forms.CharField(
        required=False, max_length=200, help_text="A username, a source's slug, or 'system'."
    )
    action = forms.RegexField(
        regex=ACTION_NAME,
        required=False,
        max_length=64,
        help_text="Events: e.g. case.decided. Decisions: confirm, overturn, decided or escalate.",
        error_messages={"invalid": "Lower-case words joined by dots, e.g. case.decided."},
    )
    include_reasoning = forms.BooleanField(
        required=False, label="Include the model's chain of thought (decisions)"
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        kind = data.get("kind")
        if kind == Kind.STATEMENTS:
            if data.get("format") == Format.CSV:
                self.add_error("format", "Statements of reasons are JSON records: choose JSON Lines.")
            if data.get("action"):
                self.add_error("action", "Statements of reasons have no action to filter on.")
        if kind == Kind.DECISIONS and data.get("action") and data["action"] not in Decision.Action.values:
            self.add_error("action", "For decisions: confirm, overturn, decided or escalate.")
        if data.get("include_reasoning") and kind != Kind.DECISIONS:
            self.add_error("include_reasoning", "Only decisions carry the model's chain of thought.")
        return data

    def export_request(self) -> ExportRequest:
        data = self.cleaned_data
        return ExportRequest(
            kind=data["kind"],
            format=data["format"],
            since=data.get("since"),
            until=data.get("until"),
            policy=data.get("policy"),
            actor=data.get("actor") or "",
            action=data.get("action") or "",
            include_reasoning=bool(data.get("include_reasoning")),
        )


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. 'quarterly DSA report'.")


class AuditLogFilterForm(TimeRangeForm):
    action = forms.RegexField(
        regex=ACTION_NAME,
        required=False,
        max_length=64,
        widget=forms.TextInput(attrs={"placeholder": "case.decided"}),
        error_messages={"invalid": "Lower-case words joined by dots, e.g. case.decided."},
    )
    actor = forms.CharField(
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "username, source or system"}),
    )
    object_type = forms.CharField(
        required=False,
        max_length=64,
        label="Object",
        widget=forms.TextInput(attrs={"placeholder": "moderation.case"}),
    )
    object_id = forms.CharField(required=False, max_length=64, label="Id")
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def filters(self) -> AuditFilters:
        data = self.cleaned_data
        return AuditFilters(
            action=data.get("action") or "",
            actor=(data.get("actor") or "").strip(),
            object_type=(data.get("object_type") or "").strip(),
            object_id=(data.get("object_id") or "").strip(),
            since=data.get("since"),
            until=data.get("until"),
        )
