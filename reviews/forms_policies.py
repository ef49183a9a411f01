from __future__ import annotations

from typing import Any

from django import forms

from moderation.models import Policy, PolicyVersion
from moderation.services import POLICY_TEXT_MAX_CHARS
from reviews.evaluations import EFFORTS
from reviews.golden import GoldenFilters
from reviews.models import Decision, GoldenExample


class DraftForm(forms.Form):
    text = forms.CharField(
        max_length=POLICY_TEXT_MAX_CHARS,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 28, "spellcheck": "true", "class": "policy-text"}),
    )


class ActivateForm(forms.Form):
    override_reason = forms.CharField(
        required=False,
        max_length=1000,
        label="Override reason",
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Required only when the gate is closed; recorded in the audit log.",
    )


class GoldenFilterForm(forms.Form):
    status = forms.ChoiceField(choices=[("", "Any status"), *GoldenExample.Status.choices], required=False)
    origin = forms.ChoiceField(choices=[("", "Any origin"), *GoldenExample.Origin.choices], required=False)
    label = forms.ChoiceField(choices=[("", "Any label"), *Decision.Label.choices], required=False)

    def filters(self) -> GoldenFilters:
        if not self.is_valid():
            return GoldenFilters()
        return GoldenFilters(**{k: self.cleaned_data.get(k) or "" for k in ("status", "origin", "label")})


class GoldenEditForm(forms.Form):
    text = forms.CharField(strip=False, widget=forms.Textarea(attrs={"rows": 6}))
    expected_label = forms.ChoiceField(choices=Decision.Label.choices, widget=forms.RadioSelect)
    rule_ids = forms.CharField(required=False, max_length=500, help_text="Comma-separated, e.g. SP1, SP3")
    category = forms.CharField(required=False, max_length=100)


class GoldenImportForm(forms.Form):
    file = forms.FileField(help_text="CSV (header: text, label, rule_ids) or JSONL (one object per line)")


class GoldenImportConfirmForm(forms.Form):
    status = forms.ChoiceField(
        choices=[
            (GoldenExample.Status.CANDIDATE, "as candidates (to review)"),
            (GoldenExample.Status.ACCEPTED, "as accepted examples"),
        ],
        widget=forms.RadioSelect,
        initial=GoldenExample.Status.CANDIDATE,
    )


class RunForm(forms.Form):
    version = forms.ModelChoiceField(queryset=PolicyVersion.objects.none(), empty_label=None)
    effort = forms.ChoiceField(choices=[("", "Default effort"), *[(e, e) for e in EFFORTS]], required=False)
    model = forms.CharField(required=False, max_length=200, help_text="Default: SAFEGUARD_MODEL")

    def __init__(self, *args: Any, policy: Policy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["version"].queryset = policy.versions.order_by("-number")  # type: ignore[attr-defined]
        self.fields["version"].label_from_instance = (  # type: ignore[attr-defined]
            lambda v: f"v{v.number} ({v.status})"
        )


class CompareForm(forms.Form):
    a = forms.IntegerField(min_value=1)
    b = forms.IntegerField(min_value=1)
