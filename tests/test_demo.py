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
from websockets.exceptions import ConnectionClosed

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


def _sqlite_env(tmp_path) -> dict[str, str]:
    """Return the environment of a demo on its own SQLite file, without Redis."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    env["DJANGO_SETTINGS_MODULE"] = "console.settings"
    return env


def _wait_ready(proc: subprocess.Popen, base_url: str, output) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"demo did not start: {output()}")
        time.sleep(0.3)


def test_it_serves_the_console_on_sqlite_without_redis(tmp_path):
    port = _free_port()
    env = _sqlite_env(tmp_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "demo",
            "--port",
            str(port),
            "--no-simulate",
            "--targets-port",
            "0",
            "--no-mqtt",
        ],
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
        # The live-update socket is served (and refuses an anonymous visitor with 4401).
        from websockets.sync.client import connect

        url = f"ws://127.0.0.1:{port}/ws/live/?streams=alerts"
        with connect(url, origin=f"http://127.0.0.1:{port}", open_timeout=5) as socket:
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(5):  # a message naming the reason may come before the close
                    socket.recv(timeout=5)
        assert closed.value.rcvd.code == 4401
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_simulated_plant_reaches_its_first_firing_alert_and_stops_cleanly(tmp_path):
    port = _free_port()
    env = _sqlite_env(tmp_path)
    log_path = tmp_path / "demo.log"
    command = [sys.executable, "manage.py", "demo", "--port", str(port), "--speed", "10"]
    command += ["--seed", "3", "--targets-port", "0", "--no-mqtt"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, base_url, log_path.read_text)
        created = subprocess.run(
            [sys.executable, "manage.py", "createtoken", "watcher", "--role", "operator"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        headers = {"Authorization": f"Bearer {created.stdout.splitlines()[-1]}"}
        deadline = time.monotonic() + 120
        while True:
            answer = requests.get(
                f"{base_url}/api/v1/alerts?state=firing", headers=headers, timeout=10
            )
            assert answer.status_code == 200, answer.text
            if answer.json()["count"]:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no alert fired: {log_path.read_text()}")
            time.sleep(1)
        fired = {alert["rule"] for alert in answer.json()["results"]}
        assert fired <= {
            "wo-not-acknowledged-p1",
            "hold-not-applied-p1",
            "machine-alert-without-case",
            "lab-result-failed",
            "machine-states-p1-silent",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    output = log_path.read_text()
    assert proc.returncode == 0, output
    assert "demo stopped" in output
    assert "simulator step" not in output  # no step of the simulated plant failed
    assert "Andon rejected" not in output
    assert "What to look at" in output
