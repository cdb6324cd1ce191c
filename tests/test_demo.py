"""`python manage.py demo` sets up the embedded default and serves the console."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
import requests
from django.contrib.auth.models import User
from django.core.management import call_command

from integrations.models import Connector, Plant, System
from monitors.models import Rule

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db
def test_it_loads_the_landscape_and_prints_working_logins(client):
    out = StringIO()
    call_command("demo", "--no-serve", stdout=out)
    assert Plant.objects.count() == 2
    assert System.objects.filter(kind="MES").count() == 2
    assert Connector.objects.filter(status="active").count() >= 8
    assert Rule.objects.filter(enabled=True, kind="followup").count() >= 3
    logins = [line for line in out.getvalue().splitlines() if line.startswith("login: ")]
    assert len(logins) == 2
    username, password = logins[1].removeprefix("login: ").split(" (")[0].split(" / ")
    assert username == "operator"
    assert User.objects.get(username="operator").check_password(password)
    assert client.login(username=username, password=password)
    page = client.get("/")
    assert page.status_code == 200
    assert b"erp-to-mes" in page.content


@pytest.mark.django_db
def test_running_it_twice_keeps_one_landscape():
    call_command("demo", "--no-serve", stdout=StringIO())
    counts = (Plant.objects.count(), System.objects.count(), Connector.objects.count())
    call_command("demo", "--no-serve", stdout=StringIO())
    assert (Plant.objects.count(), System.objects.count(), Connector.objects.count()) == counts


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_it_serves_the_console_on_sqlite_without_redis(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    env["DJANGO_SETTINGS_MODULE"] = "console.settings"
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "demo", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"demo did not start: {proc.stdout.read()}") from None
                time.sleep(0.3)
        assert response.status_code == 200
        home = requests.get(f"http://127.0.0.1:{port}/", timeout=5, allow_redirects=False)
        assert home.status_code == 302
        assert "/login/" in home.headers["Location"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
