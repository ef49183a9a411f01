from __future__ import annotations

from django.urls import path

from reviews import views

app_name = "reviews"

urlpatterns = [
    path("", views.home, name="home"),
    path("queue/", views.queue, name="queue"),
    path("queue/counts", views.queue_counts, name="queue_counts"),
    path("queue/next", views.case_next, name="case_next"),
    path("cases/<int:case_id>/", views.case_detail, name="case_detail"),
    path("cases/<int:case_id>/decide", views.case_decide, name="case_decide"),
    path("cases/<int:case_id>/skip", views.case_skip, name="case_skip"),
    path("cases/<int:case_id>/renew", views.case_renew, name="case_renew"),
    path("metrics/", views.metrics_page, name="metrics"),
    path("callbacks/", views.callbacks_page, name="callbacks"),
    path("audit/", views.audit_page, name="audit"),
    path("audit/export", views.audit_export, name="audit_export"),
    path("audit/tokens", views.api_token_create, name="api_token_create"),
    path("audit/tokens/<int:token_id>/revoke", views.api_token_revoke, name="api_token_revoke"),
]
