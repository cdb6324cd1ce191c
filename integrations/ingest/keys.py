"""Business keys: which names make an item findable, and how their values are indexed.

``ANDON_BUSINESS_KEY_ATTRIBUTES`` lists attribute names such as ``workorder.id``;
the key's short name (``workorder``) is what a KeyRef row, a CloudEvents
extension and a message's ``business_keys`` use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache

from django.conf import settings

from integrations.ingest.bulk import insert_ignore
from integrations.models import KeyRef

# Column sizes of KeyRef.name and KeyRef.value.
MAX_KEY_NAME = 64
MAX_KEY_VALUE = 255

KEYREF_COLUMNS = ("value", "name", "item_kind", "item_id", "at")
KEYREF_IDENTITY = ("item_kind", "item_id", "name", "value")

_NOT_EXTENSION_CHARS = re.compile(r"[^a-z0-9]")


def short_key_name(attribute: str) -> str:
    """Return the short name of a configured key attribute (``workorder.id`` -> ``workorder``)."""
    return attribute[:-3] if attribute.endswith(".id") else attribute


def event_key_extensions() -> dict[str, str]:
    """Return the CloudEvents extension names that carry a business key, with the key's name.

    Extension names are lowercase letters and digits only, so ``work_order.id``
    is carried by the extension ``workorder`` and indexed as ``work_order``.
    """
    return _extension_names(tuple(settings.ANDON_BUSINESS_KEY_ATTRIBUTES))


@lru_cache(maxsize=8)
def _extension_names(attributes: tuple[str, ...]) -> dict[str, str]:
    names: dict[str, str] = {}
    for attribute in attributes:
        short = short_key_name(attribute)
        extension = _NOT_EXTENSION_CHARS.sub("", short.lower())
        if extension:
            names.setdefault(extension, short[:MAX_KEY_NAME])
    return names


def key_value(value: object) -> str | None:
    """Return a key value as the string it is indexed by; None when it is not a string or number."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def keyref_rows(
    kind: str, item_id: int, at: datetime, keys: Iterable[tuple[str, str]]
) -> list[tuple[str, str, str, int, datetime]]:
    """Return KeyRef rows (in ``KEYREF_COLUMNS`` order) making one item findable by its keys."""
    return [(value, name, kind, item_id, at) for name, value in keys if value]


def insert_keyrefs(rows: list[tuple[str, str, str, int, datetime]]) -> None:
    """Insert KeyRef rows (``KEYREF_COLUMNS`` order), skipping those already stored.

    Must run inside the transaction that stores the items.
    """
    if rows:
        insert_ignore(KeyRef, KEYREF_COLUMNS, rows, KEYREF_IDENTITY)
