"""Typed environment helpers and the locally kept secret key."""

from __future__ import annotations

import os
import stat

import pytest

from console.env import ConfigError, env_bool, env_int, local_secret_key


def test_a_bad_integer_names_the_variable(monkeypatch):
    monkeypatch.setenv("ANDON_TEST_NUMBER", "ten")
    with pytest.raises(ConfigError, match="ANDON_TEST_NUMBER must be an integer"):
        env_int("ANDON_TEST_NUMBER", 1)


def test_a_bad_boolean_names_the_variable(monkeypatch):
    monkeypatch.setenv("ANDON_TEST_FLAG", "maybe")
    with pytest.raises(ConfigError, match="ANDON_TEST_FLAG"):
        env_bool("ANDON_TEST_FLAG")


def test_the_local_secret_key_is_made_once_private_and_reused(tmp_path):
    path = tmp_path / "secret"
    first = local_secret_key(path)
    assert len(first) >= 50
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert local_secret_key(path) == first
