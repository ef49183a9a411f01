from __future__ import annotations

from django.urls import path

from policies import views as views_policies
from reviews import views, views_engine

app_name = "reviews"

urlpatterns = [
    path("", views.home, name="home"),
    path("queue/", views.queue, name="queue"),
    path("queue/counts", views.queue_counts, name="queue_counts"),
    path("queue/next", views.case_next, name="case_next"),
    path("cases/<int:case_id>/", views.case_detail, name="case_detail"),
    path("cases/<int:case_id>/decide", views.case_decide, name="case_decide"),
    path("cases/<int:case_id>/decide-item", views.item_decide, name="item_decide"),
    path("cases/<int:case_id>/skip", views.case_skip, name="case_skip"),
    path("cases/<int:case_id>/renew", views.case_renew, name="case_renew"),
    path("metrics/", views.metrics_page, name="metrics"),
    path("callbacks/", views.callbacks_page, name="callbacks"),
    path("policies/", views_policies.policies_list, name="policies"),
    path("policies/new", views_policies.policy_create, name="policy_create"),
    path("policies/<slug:slug>/", views_policies.policy_detail, name="policy_detail"),
    path("policies/<slug:slug>/settings", views_policies.policy_settings, name="policy_settings"),
    path("policies/<slug:slug>/drafts", views_policies.policy_draft_new, name="policy_draft_new"),
    path("policies/<slug:slug>/diff", views_policies.policy_diff, name="policy_diff"),
    path("policies/<slug:slug>/v<int:number>/", views_policies.policy_version, name="policy_version"),
    path(
        "policies/<slug:slug>/v<int:number>/lint", views_policies.policy_draft_lint, name="policy_draft_lint"
    ),
    path(
        "policies/<slug:slug>/v<int:number>/publish",
        views_policies.policy_version_publish,
        name="policy_version_publish",
    ),
    path(
        "policies/<slug:slug>/v<int:number>/activate",
        views_policies.policy_version_activate,
        name="policy_version_activate",
    ),
    path("policies/<slug:slug>/golden/", views_policies.golden_list, name="golden_list"),
    path("policies/<slug:slug>/golden/import", views_policies.golden_import, name="golden_import"),
    path(
        "policies/<slug:slug>/golden/import/confirm",
        views_policies.golden_import_confirm,
        name="golden_import_confirm",
    ),
    path("policies/<slug:slug>/golden/<int:example_id>/", views_policies.golden_edit, name="golden_edit"),
    path(
        "policies/<slug:slug>/golden/<int:example_id>/<str:action>",
        views_policies.golden_curate,
        name="golden_curate",
    ),
    path("policies/<slug:slug>/runs", views_policies.evaluation_run_new, name="evaluation_run_new"),
    path(
        "policies/<slug:slug>/auto-clear/<int:suspension_id>/resume",
        views_policies.autoclear_resume,
        name="autoclear_resume",
    ),
    path("runs/compare", views_policies.evaluation_runs_compare, name="evaluation_runs_compare"),
    path("runs/<int:run_id>/", views_policies.evaluation_run, name="evaluation_run"),
    path(
        "runs/<int:run_id>/progress", views_policies.evaluation_run_progress, name="evaluation_run_progress"
    ),
    path("runs/<int:run_id>/cancel", views_policies.evaluation_run_cancel, name="evaluation_run_cancel"),
    path("settings/engine", views_engine.engine_settings_page, name="engine_settings"),
    path("settings/engine/test", views_engine.engine_settings_check, name="engine_settings_check"),
]
