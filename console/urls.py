"""Andon's URL map: ingest, API, health, schema, admin and the operator UI."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from console.pages import (
    alerts,
    correlation,
    home,
    landscape,
    messages,
    notifications,
    replays,
    rules,
)
from console.schema import SchemaView

urlpatterns = [
    path("", include("console.health_urls")),
    path("", include("integrations.urls")),
    path("", include("monitors.urls")),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
    path("", home.home, name="home"),
    path("search/", home.search, name="search"),
    path("correlations/", correlation.correlation, name="correlation"),
    path("messages/", messages.message_list, name="messages"),
    path("messages/<int:pk>/", messages.message_detail, name="message"),
    path("systems/", landscape.systems, name="systems"),
    path("connectors/", landscape.connectors, name="connectors"),
    path("alerts/", alerts.alert_list, name="alerts"),
    path("alerts/<int:pk>/", alerts.alert_detail, name="alert"),
    path("alerts/<int:pk>/ack", alerts.alert_ack, name="alert-ack"),
    path("alerts/<int:pk>/resolve", alerts.alert_resolve, name="alert-resolve"),
    path("alerts/<int:pk>/silence", alerts.alert_silence, name="alert-silence"),
    path("alerts/silences/<int:pk>/expire", alerts.silence_expire, name="silence-expire"),
    path("alerts/maintenance/", alerts.window_create, name="window-create"),
    path("alerts/maintenance/<int:pk>/toggle", alerts.window_toggle, name="window-toggle"),
    path("replays/", replays.job_list, name="replays"),
    path("replays/new/", replays.replay_new, name="replay-new"),
    path("replays/failures/", replays.failure_groups, name="replay-failures"),
    path("replays/edit/<int:message_id>/", replays.replay_edit, name="replay-edit"),
    path("replays/<int:pk>/", replays.job_detail, name="replay"),
    path("replays/<int:pk>/progress.json", replays.job_progress, name="replay-progress"),
    path("replays/<int:pk>/approve", replays.job_approve, name="replay-approve"),
    path("replays/<int:pk>/cancel", replays.job_cancel, name="replay-cancel"),
    path("dashboards/", include("console.pages.dashboards")),
    path("rules/", rules.rule_list, name="rules"),
    path("rules/export.yaml", rules.rule_export, name="rules-export"),
    path("rules/new/", rules.rule_new, name="rule-new"),
    path("rules/<slug:name>/", rules.rule_edit, name="rule"),
    path("rules/<slug:name>/history/", rules.rule_history, name="rule-history"),
    path("notifications/", notifications.notification_page, name="notifications"),
    path(
        "notifications/contact-points/<int:pk>/test",
        notifications.contact_point_test,
        name="notification-test",
    ),
    path("ack/<str:token>/", notifications.ack_link, name="ack-link"),
]
