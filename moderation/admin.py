from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db import models

from audit.admin import AuditedModelAdmin
from moderation import callback_urls
from moderation.models import Source
from policies.models import Policy, PolicyVersion


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


class PolicyVersionInline(admin.TabularInline[PolicyVersion, Policy]):
    model = PolicyVersion
    fields = ("number", "status", "token_count", "rule_ids", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(Policy)
class PolicyAdmin(admin.ModelAdmin[Policy]):
    """Shown only: policies are created and their settings changed on the policy team's pages, which validate
    and audit every change (/policies/new, /policies/<slug>/settings)."""

    list_display = ("name", "slug", "auto_action_violations", "auto_clear_min_confidence", "qa_sample_rate")
    inlines = (PolicyVersionInline,)

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False
