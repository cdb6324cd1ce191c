"""Masking of sensitive payload fields for people who may not see them (non-admins).

A connector's ``sensitive_fields`` lists dotted paths into its JSON payloads:
``customer.email``, ``lines.*.price`` (``*`` matches every key or list item),
optionally prefixed ``$.``. Header names listed the same way (``headers.authorization``)
mask headers. Masked values become ``MASK``; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

MASK = "••••"


def _split(path: str) -> list[str]:
    path = path.strip()
    if path.startswith("$."):
        path = path[2:]
    return [part for part in path.split(".") if part]


def mask_value(value: Any, paths: Iterable[str]) -> Any:
    """Return a copy of a JSON value with every listed path masked."""
    result = value
    for path in paths:
        parts = _split(path)
        if parts:
            result = _mask(result, parts)
    return result


def _mask(value: Any, parts: list[str]) -> Any:
    head, rest = parts[0], parts[1:]
    if isinstance(value, dict):
        out = dict(value)
        keys = list(out) if head == "*" else [k for k in out if k == head]
        for key in keys:
            out[key] = MASK if not rest else _mask(out[key], rest)
        return out
    if isinstance(value, list):
        if head == "*":
            return [MASK if not rest else _mask(item, rest) for item in value]
        if head.isdigit() and int(head) < len(value):
            out_list = list(value)
            index = int(head)
            out_list[index] = MASK if not rest else _mask(out_list[index], rest)
            return out_list
    return value


def _header_names(paths: Iterable[str]) -> set[str]:
    names = set()
    for path in paths:
        parts = _split(path)
        if len(parts) == 2 and parts[0].lower() == "headers":
            names.add(parts[1].lower())
    return names


def mask_headers(headers: dict[str, str], paths: Iterable[str]) -> dict[str, str]:
    """Mask headers named by ``headers.<name>`` paths (case-insensitive; ``headers.*``: all)."""
    names = _header_names(paths)
    return {k: (MASK if k.lower() in names or "*" in names else v) for k, v in headers.items()}


def render_payload(
    payload: bytes | None, content_type: str, paths: Iterable[str], *, masked: bool
) -> str:
    """Return a payload as display text: JSON pretty-printed (masked when asked), else text.

    A non-JSON body of a connector with sensitive fields is hidden whole from
    non-admins, since its fields cannot be located.
    """
    if not payload:
        return ""
    paths = [p for p in paths if _split(p)[:1] != ["headers"]]
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        if masked and paths:
            return f"{MASK} ({len(payload)} bytes hidden: sensitive fields in a non-JSON body)"
        text = payload.decode("utf-8", errors="replace")
        return text
    if masked and paths:
        value = mask_value(value, paths)
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
