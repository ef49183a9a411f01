from __future__ import annotations

from django.urls import path

from audit import views

app_name = "audit"

urlpatterns = [
    path("audit/", views.audit_page, name="audit"),
    path("audit/log/", views.audit_log, name="audit_log"),
    path("audit/export", views.audit_export, name="audit_export"),
    path("audit/tokens", views.api_token_create, name="api_token_create"),
    path("audit/tokens/<int:token_id>/revoke", views.api_token_revoke, name="api_token_revoke"),
]
