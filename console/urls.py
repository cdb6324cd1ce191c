"""Andon's URL map: ingest, API, health, schema, admin and the operator UI."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from console import views
from console.schema import SchemaView

urlpatterns = [
    path("", include("console.health_urls")),
    path("", include("integrations.urls")),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(template_name="admin/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", views.home, name="home"),
]
