"""Test settings: PostgreSQL and Redis when reachable (required under CI=true), else SQLite.

An explicit DATABASE_URL / REDIS_URL always wins.
"""

from __future__ import annotations

import os
import socket


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

if "DATABASE_URL" not in os.environ:
    if _reachable("127.0.0.1", 5432):
        os.environ["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/andon"
    elif _CI:
        raise RuntimeError("CI=true but PostgreSQL is not reachable on 127.0.0.1:5432")

if "REDIS_URL" not in os.environ:
    if _reachable("127.0.0.1", 6379):
        os.environ["REDIS_URL"] = "redis://127.0.0.1:6379/15"
    elif _CI:
        raise RuntimeError("CI=true but Redis is not reachable on 127.0.0.1:6379")

from console.settings import *  # noqa: E402,F403

# Parallel suites on one server (several checkouts) each need their own test database.
DATABASES["default"].setdefault("TEST", {})["NAME"] = os.environ.get("ANDON_TEST_DB")  # noqa: F405

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
