from django.apps import AppConfig


class MonitorsConfig(AppConfig):
    name = "monitors"
    verbose_name = "Monitors"

    def ready(self) -> None:
        """Give the correlation timeline the alerts of its keys (when that engine is present)."""
        import monitors.notify  # noqa: F401 - registers the outbox handler "notify.deliver"

        try:
            from integrations.correlation import register_alert_source
        except ImportError:
            # The correlation engine has not landed yet; the timeline then shows no alerts.
            return
        from monitors.api import alerts_for_keys

        register_alert_source(alerts_for_keys)
