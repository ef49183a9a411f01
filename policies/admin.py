from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db import models

from audit.admin import AuditedModelAdmin
from policies.models import GoldenExample, Policy, PolicyVersion, StatementOfReasonsMapping


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


@admin.register(StatementOfReasonsMapping)
class StatementOfReasonsMappingAdmin(AuditedModelAdmin[StatementOfReasonsMapping]):
    """How each policy's restricting decisions read in the DSA statements-of-reasons export."""

    audit_name = "statement_mapping"

    list_display = ("policy", "decision_ground", "category", "source_type")
    list_filter = ("decision_ground", "category")
    formfield_overrides = {models.URLField: {"form_class": forms.URLField, "assume_scheme": "https"}}
