from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db import models

from audit.admin import AuditedModelAdmin  # also registers the audited User and Group admins
from audit.models import ApiToken
from policies.models import GoldenExample, StatementOfReasonsMapping
from reviews.models import CallbackDelivery, QueueGrant


@admin.register(QueueGrant)
class QueueGrantAdmin(AuditedModelAdmin[QueueGrant]):
    audit_name = "queue_grant"
    list_display = ("user", "policy", "created_at")
    list_filter = ("policy",)


@admin.register(GoldenExample)
class GoldenExampleAdmin(AuditedModelAdmin[GoldenExample]):
    audit_name = "golden"  # only deletes are possible here
    list_display = ("policy", "expected_label", "origin", "status", "created_at")
    list_filter = ("policy", "status", "origin")

    # Curation happens on the policy team's pages, which check duplicates and audit every step.
    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(CallbackDelivery)
class CallbackDeliveryAdmin(admin.ModelAdmin[CallbackDelivery]):
    list_display = ("decision", "attempt", "succeeded", "status_code", "error", "created_at")
    list_filter = ("succeeded",)
    formfield_overrides = {models.URLField: {"form_class": forms.URLField, "assume_scheme": "https"}}

    # Written by the delivery task only: the record of what the platform was told cannot be forged or erased.
    def has_add_permission(self, request: object) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(StatementOfReasonsMapping)
class StatementOfReasonsMappingAdmin(AuditedModelAdmin[StatementOfReasonsMapping]):
    """How each policy's restricting decisions read in the DSA statements-of-reasons export."""

    audit_name = "statement_mapping"

    list_display = ("policy", "decision_ground", "category", "source_type")
    list_filter = ("decision_ground", "category")
    formfield_overrides = {models.URLField: {"form_class": forms.URLField, "assume_scheme": "https"}}


@admin.register(ApiToken)
class ApiTokenAdmin(AuditedModelAdmin[ApiToken]):
    """Tokens are made by their owner on the audit page; here an admin can only see and revoke them."""

    audit_name = "api_token"

    list_display = ("name", "user", "key_id", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    fields = ("name", "user", "key_id", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("name", "user", "key_id", "created_at", "last_used_at")

    def has_add_permission(self, request: object) -> bool:
        return False
