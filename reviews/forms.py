from __future__ import annotations

import time
from typing import Any

from django import forms

from moderation.models import Case
from policies.models import Confidence, Policy, PolicyVersion, Verdict
from reviews.models import Decision
from reviews.selectors import QueueFilters, case_has_model_verdict, model_cited_rule_ids, rule_names_of
from reviews.services import DecisionIn

MAX_SECONDS_SPENT = 24 * 3600


class QueueFilterForm(forms.Form):
    policy = forms.ModelChoiceField(
        queryset=Policy.objects.none(), required=False, empty_label="All my queues"
    )
    verdict = forms.ChoiceField(choices=[("", "Any verdict"), *Verdict.choices], required=False)
    confidence = forms.ChoiceField(choices=[("", "Any confidence"), *Confidence.choices], required=False)
    older_than_minutes = forms.IntegerField(
        required=False, min_value=1, max_value=60 * 24 * 365, label="Older than (min)"
    )
    escalated = forms.BooleanField(required=False, label="Escalated only")
    appeals = forms.BooleanField(required=False, label="Appeals only")
    injection = forms.BooleanField(required=False, label="Likely injection only")

    def __init__(self, *args: Any, policies: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["policy"].queryset = policies  # type: ignore[attr-defined]

    def filters(self) -> QueueFilters:
        data = self.cleaned_data
        return QueueFilters(
            policy=data["policy"].pk if data.get("policy") else None,
            verdict=data.get("verdict") or "",
            confidence=data.get("confidence") or "",
            older_than_minutes=data.get("older_than_minutes"),
            escalated=bool(data.get("escalated")),
            appeals=bool(data.get("appeals")),
            injection=bool(data.get("injection")),
        )


def rule_choices(version: PolicyVersion) -> list[tuple[str, str]]:
    """The policy version's rule ids as checkbox choices, each with its name from the policy text."""
    names = rule_names_of(version)
    return [(r, f"{r} {names[r]}" if names.get(r) else r) for r in version.rule_ids]


class DecisionForm(forms.Form):
    action = forms.ChoiceField(choices=Decision.Action.choices)
    final_label = forms.ChoiceField(choices=Decision.Label.choices, required=False, widget=forms.RadioSelect)
    rule_ids = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple)
    note = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))
    opened_at = forms.IntegerField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, case: Case, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.case = case
        self.fields["rule_ids"].choices = rule_choices(case.policy_version)  # type: ignore[attr-defined]
        self.has_model_verdict = case_has_model_verdict(case)
        if not self.is_bound:
            initial: dict[str, Any] = {"opened_at": int(time.time())}
            # The overturn label is the other one; with no model verdict nothing is preselected: the
            # moderator chooses, so one key never records a label nobody picked.
            if case.verdict == Verdict.VIOLATES:
                initial["final_label"] = Verdict.SAFE
                initial["rule_ids"] = model_cited_rule_ids(case)
            elif case.verdict == Verdict.SAFE:
                initial["final_label"] = Verdict.VIOLATES
            self.initial.update(initial)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        action = data.get("action")
        if action == Decision.Action.CONFIRM and not self.has_model_verdict:
            raise forms.ValidationError("The model gave no verdict to confirm: decide with the right label.")
        if (
            action == Decision.Action.CONFIRM
            and self.case.verdict == Verdict.VIOLATES
            and not data.get("rule_ids")
            and self.case.policy_version.policy.rules_required
            and not model_cited_rule_ids(self.case)
        ):
            self.add_error(
                "rule_ids", "The model cited no rule, and this policy requires one for a violation: tick it."
            )
        if action in (Decision.Action.OVERTURN, Decision.Action.DECIDED):
            label = data.get("final_label")
            if not label:
                self.add_error("final_label", "Choose the correct label.")
            elif label == self.case.verdict:
                self.add_error("final_label", "That is the model's verdict: confirm it instead.")
            elif (
                label == Verdict.VIOLATES
                and not data.get("rule_ids")
                and self.case.policy_version.policy.rules_required
            ):
                self.add_error("rule_ids", "This policy requires at least one rule for a violation.")
        if action == Decision.Action.ESCALATE and not (data.get("note") or "").strip():
            self.add_error("note", "Say why you escalate, for the senior moderator.")
        return data

    def seconds_spent(self) -> int:
        opened_at = self.cleaned_data.get("opened_at")
        if not opened_at:
            return 0
        return max(0, min(MAX_SECONDS_SPENT, int(time.time()) - int(opened_at)))


class PolicyDecisionForm(forms.Form):
    """One policy of an item under review: the label (preset to the model's verdict: agreeing is the
    default) and the rules (preset to the model's cited rules)."""

    final_label = forms.ChoiceField(choices=Decision.Label.choices, required=False, widget=forms.RadioSelect)
    rule_ids = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple)

    def __init__(self, *args: Any, case: Case, **kwargs: Any) -> None:
        kwargs["prefix"] = f"case{case.pk}"
        super().__init__(*args, **kwargs)
        self.case = case
        self.fields["rule_ids"].choices = rule_choices(case.policy_version)  # type: ignore[attr-defined]
        self.has_model_verdict = case_has_model_verdict(case)
        self.cited = model_cited_rule_ids(case) if case.verdict == Verdict.VIOLATES else []
        if not self.is_bound and self.has_model_verdict:
            self.initial.update({"final_label": case.verdict, "rule_ids": self.cited})

    def check(self, action: str) -> None:
        """The per-policy checks for the item form's action (after is_valid)."""
        data = self.cleaned_data
        label = case_verdict = self.case.verdict
        if action == ItemDecisionForm.SUBMIT:
            label = data.get("final_label") or ""
            if not label:
                self.add_error("final_label", "Choose the correct label.")
                return
        if action in (ItemDecisionForm.SUBMIT, ItemDecisionForm.CONFIRM_ALL):
            confirming = label == case_verdict and self.has_model_verdict
            if (
                label == Verdict.VIOLATES
                and not data.get("rule_ids")
                and self.case.policy_version.policy.rules_required
                and not (confirming and self.cited)
            ):
                self.add_error("rule_ids", "This policy requires at least one rule for a violation.")

    def decision(self, action: str, *, note: str, seconds_spent: int) -> DecisionIn:
        data = self.cleaned_data
        rule_ids = list(data.get("rule_ids") or [])
        if action == ItemDecisionForm.ESCALATE:
            return DecisionIn(action=Decision.Action.ESCALATE, note=note, seconds_spent=seconds_spent)
        label = self.case.verdict if action == ItemDecisionForm.CONFIRM_ALL else data["final_label"]
        if self.has_model_verdict and label == self.case.verdict:
            return DecisionIn(
                action=Decision.Action.CONFIRM, rule_ids=rule_ids, note=note, seconds_spent=seconds_spent
            )
        # The service records it as "decided" when the model gave no verdict.
        return DecisionIn(
            action=Decision.Action.OVERTURN,
            final_label=label,
            rule_ids=rule_ids,
            note=note,
            seconds_spent=seconds_spent,
        )


class ItemDecisionForm(forms.Form):
    """One submit for every open policy of an item the moderator holds: one PolicyDecisionForm each."""

    SUBMIT, CONFIRM_ALL, ESCALATE = "submit", "confirm_all", "escalate"
    action = forms.ChoiceField(
        choices=[(SUBMIT, "Decide as marked"), (CONFIRM_ALL, "Confirm all"), (ESCALATE, "Escalate")]
    )
    note = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))
    opened_at = forms.IntegerField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, cases: list[Case], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cases = cases
        self.policies = [PolicyDecisionForm(*args, case=c, **kwargs) for c in cases]
        self.all_have_verdicts = all(p.has_model_verdict for p in self.policies)
        if not self.is_bound:
            self.initial["opened_at"] = int(time.time())

    def is_valid(self) -> bool:
        valid = super().is_valid()
        valid = all([p.is_valid() for p in self.policies]) and valid
        if not valid:
            return False
        action = self.cleaned_data["action"]
        if action == self.CONFIRM_ALL and not self.all_have_verdicts:
            self.add_error(None, "The model gave no verdict on every policy: decide each with its label.")
        if action == self.ESCALATE and not (self.cleaned_data.get("note") or "").strip():
            self.add_error("note", "Say why you escalate, for the senior moderator.")
        if action != self.ESCALATE:
            for policy_form in self.policies:
                policy_form.check(action)
        return not self.errors and not any(p.errors for p in self.policies)

    def decisions(self) -> list[tuple[Case, DecisionIn]]:
        """Per case, what to record; the time spent is shared equally between the policies."""
        opened_at = self.cleaned_data.get("opened_at")
        spent = max(0, min(MAX_SECONDS_SPENT, int(time.time()) - int(opened_at))) if opened_at else 0
        share = spent // max(1, len(self.policies))
        note = self.cleaned_data.get("note") or ""
        action = self.cleaned_data["action"]
        return [(p.case, p.decision(action, note=note, seconds_spent=share)) for p in self.policies]
