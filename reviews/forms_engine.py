"""The engine page's forms: the connection (fields the environment sets are read-only) and the test."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.db.models import QuerySet

from inference_worker.engine_check import SAMPLE_TEXT_MAX_CHARS
from inference_worker.engine_settings import FIELDS_BY_NAME, EngineValue
from inference_worker.models import EngineSettings
from policies.models import Policy, PolicyVersion

_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
DEFAULT_SAMPLE_TEXT = "Limited offer!!! Buy followers now at cheap-followers.example, DM me."


def _choices(choices: list[tuple[str, str]], value: EngineValue) -> list[tuple[str, str]]:
    """The model's choices after an empty one: "the default" (what applies when nothing is saved)."""
    return [("", f"default ({value.field.built_in})"), *choices]


class EngineSettingsForm(forms.Form):
    base_url = forms.CharField(
        required=False,
        max_length=500,
        label="Base URL",
        widget=forms.TextInput(attrs={"size": 50}),
        help_text="The engine's address, e.g. http://gpu-host:8000 (a trailing /v1 is fine). Empty: none.",
    )
    transport = forms.ChoiceField(
        required=False,
        choices=EngineSettings.Transport.choices,
        help_text="completions: vLLM, harmony token ids in and out; chat: /v1/chat/completions.",
    )
    model = forms.CharField(
        required=False, max_length=200, label="Model", widget=forms.TextInput(attrs={"size": 40})
    )
    effort = forms.ChoiceField(
        required=False, choices=EngineSettings.Effort.choices, label="Reasoning effort"
    )
    escalation_model = forms.CharField(
        required=False,
        max_length=200,
        label="Escalation model",
        widget=forms.TextInput(attrs={"size": 40}),
        help_text="Re-judges unsure verdicts and every appeal. Empty: the model above.",
    )
    escalation_effort = forms.ChoiceField(
        required=False, choices=EngineSettings.Effort.choices, label="Escalation effort"
    )
    api_key = forms.CharField(
        required=False,
        max_length=1000,
        label="API key",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Sent as a bearer token. Empty: keep the saved key. Stored in the database, never shown.",
    )
    clear_api_key = forms.BooleanField(required=False, label="Remove the saved API key")
    timeout_seconds = forms.FloatField(
        required=False, min_value=1, max_value=3600, label="Timeout per request (s)"
    )
    give_up_after_seconds = forms.FloatField(
        required=False,
        min_value=1,
        max_value=24 * 3600,
        label="Give up after (s)",
        help_text="A case waiting this long for a failing engine goes to humans. Empty: the timeout.",
    )

    def __init__(self, *args: Any, values: dict[str, EngineValue], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.values = values
        for name in ("transport", "effort", "escalation_effort"):
            field = self.fields[name]
            assert isinstance(field, forms.ChoiceField)
            field.choices = _choices(list(field.choices), values[name])  # type: ignore[arg-type]
        for name, value in values.items():
            if value.from_environment:
                # The environment wins: the field is shown read-only and what is posted for it is ignored.
                self.fields[name].disabled = True
                if name == "api_key":
                    self.fields["clear_api_key"].disabled = True

    def clean_base_url(self) -> str:
        url = str(self.cleaned_data["base_url"]).strip()
        if not url:
            return ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or _CONTROL_OR_SPACE.search(url):
            raise forms.ValidationError("An http:// or https:// address, such as http://gpu-host:8000.")
        if parts.query or parts.fragment:
            raise forms.ValidationError("Only the server's address: no ?query or #fragment.")
        return url.rstrip("/")

    def clean_api_key(self) -> str:
        key = str(self.cleaned_data["api_key"])
        if _CONTROL_OR_SPACE.search(key):
            raise forms.ValidationError("An API key has no spaces or control characters.")
        return key

    def changes_requested(self) -> dict[str, Any]:
        """What the page may change: every field the environment does not set (the API key aside)."""
        return {
            name: self.cleaned_data[name]
            for name, field in FIELDS_BY_NAME.items()
            if not field.secret and not field.env_set
        }


class EngineCheckForm(forms.Form):
    policy = forms.ModelChoiceField(
        queryset=Policy.objects.none(),
        empty_label=None,
        help_text="Its active version is the policy the engine is given.",
    )
    text = forms.CharField(
        max_length=SAMPLE_TEXT_MAX_CHARS,
        label="Sample text",
        initial=DEFAULT_SAMPLE_TEXT,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Sent to the engine once, as the content to judge. Not saved.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["policy"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = policies_with_an_active_version()

    def active_version(self) -> PolicyVersion:
        policy: Policy = self.cleaned_data["policy"]
        return policy.versions.get(status=PolicyVersion.Status.ACTIVE)


def policies_with_an_active_version() -> QuerySet[Policy]:
    return Policy.objects.filter(versions__status=PolicyVersion.Status.ACTIVE).distinct().order_by("name")
