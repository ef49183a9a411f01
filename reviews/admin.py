from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db import models

from audit.admin import AuditedModelAdmin  # also registers the audited User and Group admins
from reviews.models import CallbackDelivery, QueueGrant


@admin.register(QueueGrant)
class QueueGrantAdmin(AuditedModelAdmin[QueueGrant]):
    audit_name = "queue_grant"
    list_display = ("user", "policy", "created_at")
    list_filter = ("policy",)


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
