from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from audit.api import router as audit_export_router
from config import views
from config.login_throttle import ThrottledAdminAuthenticationForm, ThrottledAuthenticationForm
from moderation.api import api

api.add_router("/audit", audit_export_router)
# Both login pages count wrong passwords and refuse a locked account or address.
admin.site.login_form = ThrottledAdminAuthenticationForm
# A refused page is logged once, without a traceback.
handler403 = views.permission_denied

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("api/v1/docs", views.api_docs, name="api_docs"),
    path("api/v1/", api.urls),
    path("admin/", admin.site.urls),
    path(
        "login/",
        auth_views.LoginView.as_view(
            authentication_form=ThrottledAuthenticationForm, redirect_authenticated_user=True
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("audit.urls")),
    path("", include("reviews.urls")),
]
