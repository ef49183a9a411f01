from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.utils.text import slugify

from moderation.models import Source
from policies.evaluations import EFFORTS
from policies.golden import GoldenFilters
from policies.lint import POLICY_OUTLINE
from policies.models import GoldenExample, Policy, PolicyVersion
from policies.services import POLICY_SETTINGS, POLICY_TEXT_MAX_CHARS
from reviews.models import Decision


class DraftForm(forms.Form):
    text = forms.CharField(
        max_length=POLICY_TEXT_MAX_CHARS,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 28, "spellcheck": "true", "class": "policy-text"}),
    )


OUTLINE = "outline"


class PolicyCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(
        max_length=100,
        required=False,
        help_text="Used in URLs, exports and the API; made from the name when left empty.",
    )
    description = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))
    start_from = forms.ChoiceField(label="First draft", choices=[])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        copies = [
            (v.policy.slug, f"a copy of {v.policy.name} (v{v.number}, active)")
            for v in PolicyVersion.objects.filter(status=PolicyVersion.Status.ACTIVE)
            .select_related("policy")
            .order_by("policy__name")
        ]
        start_from = self.fields["start_from"]
        assert isinstance(start_from, forms.ChoiceField)
        start_from.choices = [(OUTLINE, "the recommended outline, to fill in"), *copies]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if "slug" in cleaned and cleaned.get("name"):
            slug = cleaned["slug"] or slugify(cleaned["name"])[:100]
            if not slug:
                self.add_error("slug", "The name has no letters or digits to make a slug from: choose one.")
            elif Policy.objects.filter(slug=slug).exists():
                self.add_error("slug", f"A policy with the slug {slug!r} already exists.")
            cleaned["slug"] = slug
        return cleaned

    def first_draft_text(self) -> str:
        name, start_from = self.cleaned_data["name"], self.cleaned_data["start_from"]
        if start_from == OUTLINE:
            return POLICY_OUTLINE.format(name=name)
        active = PolicyVersion.objects.get(policy__slug=start_from, status=PolicyVersion.Status.ACTIVE)
        return active.text


class PolicySettingsForm(forms.ModelForm):
    qa_sample_rate = forms.FloatField(
        min_value=0.0,
        max_value=1.0,
        label="QA sample rate",
        help_text="Share of auto-cleared items that still go to a human (0 to 1).",
    )
    activation_tolerance = forms.FloatField(
        min_value=0.0,
        max_value=1.0,
        help_text="How far F1 or accuracy on the golden set may drop below the active version's before "
        "activating a new version needs an override (0 to 1).",
    )
    sources = forms.ModelMultipleChoiceField(
        queryset=Source.objects.order_by("name"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Platforms whose new items are judged under this policy.",
    )

    class Meta:
        model = Policy
        fields = list(POLICY_SETTINGS)
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}
        labels = {
            "auto_action_violations": "Act on violations without a human",
            "auto_clear_min_confidence": "Auto-clear from confidence",
            "escalate_below_confidence": "Escalate below confidence",
            "funnel_target_recall": "Target recall",
            "recall_confidence": "Confidence of the recall guarantee",
            "funnel_auto_clear": "Funnel tier may auto-clear",
            "reasoner_auto_clear": "Reasoner may auto-clear",
            "rules_required": "A violation names its rules",
        }
        help_texts = {
            "auto_action_violations": "Off (recommended): every violation goes to a moderator.",
            "auto_clear_min_confidence": "Safe verdicts at least this confident may be cleared without a "
            "human, once evaluation runs prove that level (the policy page says which level is proven).",
            "recall_confidence": "Probability (0.5 to 0.999) that an auto-clear tier meets the target recall "
            "on new items; 0.95 needs 149 labelled violations at a 0.98 target.",
            "funnel_auto_clear": "Only while its threshold is proven on held-out golden violations and QA "
            "has not suspended it.",
            "reasoner_auto_clear": "Only while an evaluation run on the golden set proves the confidence "
            "level and QA has not suspended it.",
            "rules_required": "On (recommended): a moderator who decides it violates ticks at least one "
            "rule, so callbacks, statements of reasons and the golden set say which rule was broken.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["sources"].initial = list(self.instance.sources.all())
        self.fields["funnel_target_recall"].help_text = (
            "Share of violations every auto-clear tier must pass on to the reasoner or a human (0.5 to 1); "
            f"empty: the deployment's default, {settings.SAFEGUARD_FUNNEL_TARGET_RECALL}."
        )

    FIELDSETS = (
        ("Policy", ("name", "description")),
        ("Routing", ("auto_action_violations", "auto_clear_min_confidence", "escalate_below_confidence")),
        (
            "Auto-clear",
            (
                "funnel_auto_clear",
                "reasoner_auto_clear",
                "funnel_target_recall",
                "recall_confidence",
                "qa_sample_rate",
            ),
        ),
        ("Quality", ("activation_tolerance",)),
        ("Decisions", ("rules_required",)),
        ("Content", ("sources",)),
    )

    def fieldsets(self) -> list[tuple[str, list[forms.BoundField]]]:
        return [(title, [self[name] for name in names]) for title, names in self.FIELDSETS]

    def policy_settings(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in POLICY_SETTINGS}


class ActivateForm(forms.Form):
    override_reason = forms.CharField(
        required=False,
        max_length=1000,
        label="Override reason",
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Required only when the gate is closed; recorded in the audit log.",
    )

    REASON_REQUIRED = "Give a reason to override the activation gate."

    def __init__(self, *args: Any, gate_closed: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate_closed = gate_closed

    def clean_override_reason(self) -> str:
        reason: str = self.cleaned_data["override_reason"]
        if self.gate_closed and not reason.strip():
            raise forms.ValidationError(self.REASON_REQUIRED, code="required")
        return reason


class GoldenFilterForm(forms.Form):
    status = forms.ChoiceField(choices=[("", "Any status"), *GoldenExample.Status.choices], required=False)
    origin = forms.ChoiceField(choices=[("", "Any origin"), *GoldenExample.Origin.choices], required=False)
    label = forms.ChoiceField(choices=[("", "Any label"), *Decision.Label.choices], required=False)
    conflicts = forms.BooleanField(required=False, label="Conflicting labels only")

    def filters(self) -> GoldenFilters:
        if not self.is_valid():
            return GoldenFilters()
        return GoldenFilters(
            **{k: self.cleaned_data.get(k) or "" for k in ("status", "origin", "label")},
            conflicts=bool(self.cleaned_data.get("conflicts")),
        )


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
