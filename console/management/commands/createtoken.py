"""``manage.py createtoken NAME --role ROLE [--plant KEY]``: issue an API token."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from console.models import ApiToken, Role
from integrations.models import Plant

NAME_MAX_LENGTH = ApiToken._meta.get_field("name").max_length


class Command(BaseCommand):
    help = (
        "Create an API token and print it alone on the last line of stdout. "
        "Only its digest is stored: the token cannot be shown again."
    )

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("name", help="who or what uses the token, e.g. mes-p1-connector")
        parser.add_argument("--role", required=True, help=f"one of {', '.join(Role.values)}")
        parser.add_argument("--plant", help="key of the one plant the token may see and act on")

    def handle(self, *args, name: str, role: str, plant: str | None, **options) -> None:  # type: ignore[no-untyped-def]
        if not name.strip() or len(name) > NAME_MAX_LENGTH:
            raise CommandError(f"the name must be 1 to {NAME_MAX_LENGTH} characters long")
        if role not in Role.values:
            raise CommandError(f"unknown role {role!r}: use one of {', '.join(Role.values)}")
        scope = None
        if plant is not None:
            scope = Plant.objects.filter(key=plant).first()
            if scope is None:
                known = ", ".join(Plant.objects.values_list("key", flat=True)) or "none yet"
                raise CommandError(f"unknown plant {plant!r} (known plants: {known})")
        token, raw = ApiToken.issue(name, role, scope)
        where = f" for plant {scope.key}" if scope else " for every plant"
        self.stdout.write(
            f"Created {role} token {token.name!r}{where}. Store it now; it cannot be shown again:"
        )
        self.stdout.write(raw)
