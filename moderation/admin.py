from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db import models

from audit.admin import AuditedModelAdmin
from moderation import callback_urls
from moderation.models import Source


class SourceAdminForm(forms.ModelForm[Source]):
    def clean_callback_url(self) -> str:
        url: str = self.cleaned_data["callback_url"]
        if url:
            try:
                callback_urls.callback_url_check(url)  # the callback URL policy (https, public addresses)
            except callback_urls.CallbackUrlRefused as exc:
                raise forms.ValidationError(str(exc), code="callback_url_refused") from exc
        return url


@admin.register(Source)
class SourceAdmin(AuditedModelAdmin[Source]):
    """Every change (callback URL, signature requirement, budget, active, policies) is an audit event."""

    form = SourceAdminForm
    list_display = ("name", "slug", "is_active", "require_signature", "rate_limit_per_minute", "callback_url")
    readonly_fields = ("api_key_id",)
    exclude = ("api_key_hash", "hmac_secret")
    filter_horizontal = ("policies",)
    formfield_overrides = {models.URLField: {"form_class": forms.URLField, "assume_scheme": "https"}}
