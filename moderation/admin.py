from __future__ import annotations

from django.contrib import admin

from moderation.models import Policy, PolicyVersion, Source


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin[Source]):
    list_display = ("name", "slug", "is_active", "require_signature", "rate_limit_per_minute", "callback_url")
    readonly_fields = ("api_key_id",)
    exclude = ("api_key_hash", "hmac_secret")
    filter_horizontal = ("policies",)


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
    list_display = ("name", "slug", "auto_action_violations", "auto_clear_min_confidence", "qa_sample_rate")
    inlines = (PolicyVersionInline,)
