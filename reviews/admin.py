from __future__ import annotations

from django.contrib import admin

from reviews.models import CallbackDelivery, GoldenExample, QueueGrant


@admin.register(QueueGrant)
class QueueGrantAdmin(admin.ModelAdmin[QueueGrant]):
    list_display = ("user", "policy", "created_at")
    list_filter = ("policy",)


@admin.register(GoldenExample)
class GoldenExampleAdmin(admin.ModelAdmin[GoldenExample]):
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

    # Written by the delivery task only: the record of what the platform was told cannot be forged or erased.
    def has_add_permission(self, request: object) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False
