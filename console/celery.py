"""The Celery app: Redis broker when REDIS_URL is set; see console.settings.

Beat runs rule evaluation every ``ANDON_EVALUATE_EVERY_S`` seconds; each pass
also queues a pass for its next known deadline (``monitors.tasks``).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The rollup refresh lives beside the rollups it keeps, not in a tasks module.
app.autodiscover_tasks(["integrations"], related_name="rollups")


def beat_schedule() -> dict[str, dict[str, Any]]:
    """Return beat's schedule: the periodic evaluation pass (the safety net of deadlines)."""
    from django.conf import settings

    every = float(settings.ANDON_EVALUATE_EVERY_S)
    return {
        "evaluate-rules": {
            "task": "monitors.tasks.evaluate_all",
            "schedule": every,
            # A pass that could not start within one period is superseded by the next.
            "options": {"expires": every},
        },
        # Recovers outbox work whose wake-up was lost (Redis or a worker was down).
        "outbox-sweep": {
            "task": "console.tasks.outbox_sweep",
            "schedule": 5.0,
            "options": {"expires": 5.0},
        },
        # Pushes ingest rates and connector health to open pages (console.live, registered
        # when monitors.tasks imports it through monitors.evaluate).
        "live-health": {
            "task": "console.live.publish_health",
            "schedule": 5.0,
            "options": {"expires": 5.0},
        },
        # Keeps the per-minute connector rollups of the dashboards current (integrations.rollups).
        "refresh-rollups": {
            "task": "integrations.rollups.refresh",
            "schedule": 15.0,
            "options": {"expires": 15.0},
        },
    }


@app.on_after_configure.connect
def _configure_beat(sender: Celery, **kwargs: Any) -> None:
    # Settings are read here, not at import: this module is imported while they load.
    sender.conf.beat_schedule = beat_schedule()
