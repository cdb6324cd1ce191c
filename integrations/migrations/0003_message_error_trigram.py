"""A trigram index for the explorer's error-text search (PostgreSQL only).

`pg_trgm` may be unavailable to a non-superuser; then the search still works,
only slower, so the index is skipped with a notice instead of failing the migration.
"""

from django.db import migrations

CREATE = (
    "CREATE INDEX IF NOT EXISTS message_error_trgm_idx ON integrations_message "
    "USING gin (upper(error) gin_trgm_ops) WHERE error <> ''"
)


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SAVEPOINT andon_trgm")
        try:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        except Exception:  # noqa: BLE001 - no privilege: keep the slower search
            cursor.execute("ROLLBACK TO SAVEPOINT andon_trgm")
            print("\n  pg_trgm unavailable: error-text search runs without its index")  # noqa: T201
            return
        cursor.execute("RELEASE SAVEPOINT andon_trgm")
        cursor.execute(CREATE)


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS message_error_trgm_idx")


class Migration(migrations.Migration):
    dependencies = [("integrations", "0002_correlation_indexes")]

    operations = [migrations.RunPython(create_index, drop_index)]
