"""The embedded demo: one process, SQLite by default, no Redis needed."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db import transaction

DEMO_LANDSCAPE = Path(settings.BASE_DIR) / "integrations" / "fixtures" / "demo_landscape.yaml"
DEMO_RULES = Path(settings.BASE_DIR) / "monitors" / "fixtures" / "demo_rules.yaml"


@dataclass(frozen=True)
class Login:
    username: str
    password: str
    role: str


def prepare(out: TextIO) -> list[Login]:
    """Migrate, load the demo landscape and rules, and (re)create the demo logins."""
    call_command("migrate", interactive=False, verbosity=0)
    call_command("loadlandscape", str(DEMO_LANDSCAPE), stdout=out)
    call_command("loadrules", str(DEMO_RULES), "--actor", "demo", stdout=out)
    return ensure_logins()


@transaction.atomic
def ensure_logins() -> list[Login]:
    """Create or reset the demo admin and operator; passwords from the environment or fresh."""
    logins = []
    for username, role in (("admin", "admin"), ("operator", "operator")):
        password = os.environ.get(
            f"ANDON_DEMO_{username.upper()}_PASSWORD"
        ) or secrets.token_urlsafe(9)
        user, _ = User.objects.get_or_create(username=username)
        user.set_password(password)
        user.is_staff = role == "admin"
        user.is_superuser = role == "admin"
        user.save()
        user.groups.set([Group.objects.get(name=role)])
        logins.append(Login(username, password, role))
    return logins


def serve(host: str, port: int) -> None:
    """Serve the ASGI console in this process until interrupted.

    Without Redis there is no Celery beat, so rules are evaluated by the
    embedded scheduler, a thread of this process; with Redis the worker and
    beat do it.
    """
    import uvicorn

    if not settings.REDIS_URL:
        from monitors.scheduler import start_embedded

        start_embedded()
    uvicorn.run("console.asgi:application", host=host, port=port, log_level="warning")
