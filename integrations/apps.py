from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Integrations"

    def ready(self) -> None:
        """Register the replay worker's outbox handler and the error-group SQL function."""
        from integrations import failures, replay  # noqa: F401
