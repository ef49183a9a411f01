from __future__ import annotations

from django.contrib import admin
from django.urls import path

from config import views
from moderation.api import api

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("api/v1/", api.urls),
    path("admin/", admin.site.urls),
]
