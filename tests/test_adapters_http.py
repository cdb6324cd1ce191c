"""HTTP delivery: a real loopback target records exactly what arrives over the wire."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from integrations import outbound
from integrations.adapters import (
    AdapterError,
    DeliveryResult,
    HttpAdapter,
    build_adapter,
    close_adapters,
    get_adapter,
)

REPLAY_HEADERS = {
    "Content-Type": "application/json; charset=utf-8",
    "Idempotency-Key": "erp-to-mes-orders:42",
    "X-Andon-Replay": "7",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
}


@dataclass
class Received:
    """One request as the target saw it: raw header pairs in order, and the exact body."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0] if values else None


class Target(ThreadingHTTPServer):
    """A loopback HTTP/1.1 target whose paths script its answers.

    ``/ok`` answers 200; ``/status/<code>`` answers that code (``?retry_after=`` adds
    the header); ``/flaky`` answers 503 to the first ``fail_first`` requests;
    ``/redirect?to=<location>&code=<3xx>`` redirects, ``/loop`` to itself; ``/hang``
    answers only once ``release`` is set.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.received: list[Received] = []
        self.connections = 0
        self.fail_first = 0
        self.release = threading.Event()
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def process_request(self, request, client_address):  # one call per accepted connection
        with self.lock:
            self.connections += 1
        super().process_request(request, client_address)

    def handle_error(self, request, client_address):
        pass  # a client that timed out and left is what some tests want


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    server: Target

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        self.handle_delivery()

    def do_PUT(self):
        self.handle_delivery()

    def handle_delivery(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.server.lock:
            self.server.received.append(
                Received(self.command, self.path, list(self.headers.items()), body)
            )
            seen = len(self.server.received)
        if parts.path == "/ok":
            self.answer(200, b'{"accepted": true}')
        elif parts.path.startswith("/status/"):
            extra = {"Retry-After": query["retry_after"]} if "retry_after" in query else {}
            self.answer(int(parts.path.rsplit("/", 1)[1]), b"order 4711 is unknown here", extra)
        elif parts.path == "/flaky":
            if seen <= self.server.fail_first:
                self.answer(503, b"MES is restarting")
            else:
                self.answer(201, b"created")
        elif parts.path == "/redirect":
            self.answer(int(query.get("code", "307")), b"", {"Location": query["to"]})
        elif parts.path == "/loop":
            self.answer(302, b"", {"Location": "/loop"})
        elif parts.path == "/hang":
            self.server.release.wait(10)
            self.answer(200, b"too late")
        else:
            self.answer(404, b"no such path")

    def answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve() -> Target:
    server = Target()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


@pytest.fixture
def target() -> Iterator[Target]:
    server = serve()
    yield server
    server.release.set()
    outbound.close_session()
    close_adapters()
    server.shutdown()
    server.server_close()


@pytest.fixture
def other_target() -> Iterator[Target]:
    server = serve()
    yield server
    server.shutdown()
    server.server_close()


def http(url: str, **config) -> HttpAdapter:
    adapter = build_adapter({"kind": "http", "url": url, **config})
    assert isinstance(adapter, HttpAdapter)
    return adapter


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- what arrives -----------------------------------------------------------------------------


def test_it_delivers_the_body_and_replay_headers_exactly(target):
    body = '{"order": "WO-4711", "qty": 12, "note": "Größe ✓"}'.encode()
    result = http(target.url("/ok")).deliver(body, dict(REPLAY_HEADERS))
    assert result == DeliveryResult(result.latency_ms, 200, "200 OK")
    [request] = target.received
    assert (request.method, request.path, request.body) == ("POST", "/ok", body)
    for name, value in REPLAY_HEADERS.items():
        assert (name, value) in request.headers  # same spelling, same value
    assert request.header("Content-Length") == str(len(body))


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (bytes(range(256)) * 4 + b"\xff\xfe\x00\x80", "application/octet-stream"),
        ("<qty>5</qty><who>Müller</who>".encode("iso-8859-1"), "application/xml; charset=latin-1"),
        ("Bestellung Nr. 1".encode("utf-16"), "text/plain; charset=utf-16"),
        (b"", "application/json"),
    ],
)
def test_it_sends_any_body_byte_for_byte_without_re_encoding(target, body, content_type):
    http(target.url("/ok")).deliver(body, {**REPLAY_HEADERS, "Content-Type": content_type})
    [request] = target.received
    assert request.body == body
    assert request.header("Content-Type") == content_type


def test_it_identifies_itself_as_andon_with_its_version(target):
    http(target.url("/ok")).deliver(b"{}", dict(REPLAY_HEADERS))
    user_agent = target.received[0].header("User-Agent")
    assert user_agent == outbound.user_agent()
    assert re.fullmatch(r"Andon/\S+", user_agent)


def test_configured_headers_go_under_the_delivery_headers(target):
    adapter = http(
        target.url("/ok"),
        method="PUT",
        headers={"Authorization": "Basic YW5kb246cw==", "X-Plant": "p1", "content-type": "x/y"},
    )
    adapter.deliver(b"<order/>", {**REPLAY_HEADERS, "Content-Type": "application/xml"})
    [request] = target.received
    assert request.method == "PUT"
    assert request.header("Authorization") == "Basic YW5kb246cw=="
    assert request.header("X-Plant") == "p1"
    assert request.header("Content-Type") == "application/xml"  # the delivery's wins


def test_the_transport_computes_framing_headers_itself(target):
    http(target.url("/ok")).deliver(b"abc", {**REPLAY_HEADERS, "Content-Length": "999"})
    [request] = target.received
    assert request.body == b"abc"
    assert request.header("Content-Length") == "3"


def test_a_header_that_cannot_be_sent_is_a_permanent_error(target):
    with pytest.raises(AdapterError) as caught:
        http(target.url("/ok")).deliver(b"{}", {**REPLAY_HEADERS, "X-Note": "done ✓"})
    assert caught.value.permanent
    assert "Latin-1" in caught.value.message
    assert target.received == []


# --- what the answer means --------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 413, 415, 422])
def test_a_client_error_is_permanent_and_quotes_the_answer(target, status):
    with pytest.raises(AdapterError) as caught:
        http(target.url(f"/status/{status}")).deliver(b"{}", dict(REPLAY_HEADERS))
    error = caught.value
    assert error.permanent
    assert error.status_code == status
    assert f"POST {target.url(f'/status/{status}')} answered {status}" in error.message
    assert "order 4711 is unknown here" in error.message


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_server_errors_and_not_now_answers_are_transient(target, status):
    with pytest.raises(AdapterError) as caught:
        http(target.url(f"/status/{status}")).deliver(b"{}", dict(REPLAY_HEADERS))
    assert not caught.value.permanent
    assert caught.value.status_code == status
    assert caught.value.retry_after_s is None


def test_it_exposes_retry_after_of_a_429(target):
    with pytest.raises(AdapterError) as caught:
        http(target.url("/status/429?retry_after=7")).deliver(b"{}", dict(REPLAY_HEADERS))
    assert not caught.value.permanent
    assert caught.value.retry_after_s == 7


def test_retry_after_may_be_an_http_date():
    now = datetime(2025, 3, 4, 10, 0, 0, tzinfo=UTC)
    assert outbound.parse_retry_after("Tue, 04 Mar 2025 10:01:30 GMT", now) == 90
    assert outbound.parse_retry_after("Tue, 04 Mar 2025 09:00:00 GMT", now) == 0
    assert outbound.parse_retry_after("soon", now) is None
    assert outbound.parse_retry_after(" 120 ", now) == 120


def test_a_target_that_fails_the_first_requests_accepts_a_later_one(target):
    target.fail_first = 2
    adapter = http(target.url("/flaky"))
    for _ in range(2):
        with pytest.raises(AdapterError) as caught:
            adapter.deliver(b"{}", dict(REPLAY_HEADERS))
        assert not caught.value.permanent
        assert "503" in caught.value.message
        assert "MES is restarting" in caught.value.message
    result = adapter.deliver(b"{}", dict(REPLAY_HEADERS))
    assert result.status_code == 201
    assert len(target.received) == 3


# --- redirects --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_to_the_same_host_is_followed_with_the_same_request(target, code):
    result = http(target.url(f"/redirect?to=/ok&code={code}")).deliver(
        b"\x00binary\xff", dict(REPLAY_HEADERS)
    )
    assert result.status_code == 200
    assert target.url("/ok") in result.detail
    first, second = target.received
    assert (second.method, second.path, second.body) == ("POST", "/ok", b"\x00binary\xff")
    assert second.header("Idempotency-Key") == REPLAY_HEADERS["Idempotency-Key"]


def test_an_absolute_redirect_to_the_same_origin_is_followed(target):
    location = target.url("/ok")
    result = http(target.url(f"/redirect?to={location}")).deliver(b"{}", dict(REPLAY_HEADERS))
    assert result.status_code == 200
    assert [r.path for r in target.received][-1] == "/ok"


def test_a_redirect_to_another_port_is_refused_naming_the_location(target, other_target):
    elsewhere = other_target.url("/ok")
    with pytest.raises(AdapterError) as caught:
        http(target.url(f"/redirect?to={elsewhere}")).deliver(b"{}", dict(REPLAY_HEADERS))
    assert caught.value.permanent
    assert f"redirected (307) to another host: {elsewhere}" in caught.value.message
    assert other_target.received == []


@pytest.mark.parametrize(
    "location", ["http://mes.elsewhere.example/ok", "https://127.0.0.1/ok", "//evil.example/x"]
)
def test_a_redirect_to_another_host_or_scheme_is_refused(target, location):
    with pytest.raises(AdapterError) as caught:
        http(target.url(f"/redirect?to={location}")).deliver(b"{}", dict(REPLAY_HEADERS))
    assert caught.value.permanent
    assert "another host" in caught.value.message
    assert len(target.received) == 1


def test_a_redirect_loop_stops_as_a_permanent_error(target):
    with pytest.raises(AdapterError) as caught:
        http(target.url("/loop")).deliver(b"{}", {})
    assert caught.value.permanent
    assert "more than 5 times" in caught.value.message
    assert len(target.received) == 6


def test_see_other_counts_as_accepted_without_posting_again(target):
    result = http(target.url("/redirect?to=/ok&code=303")).deliver(b"{}", dict(REPLAY_HEADERS))
    assert result.status_code == 303
    assert len(target.received) == 1


# --- no answer --------------------------------------------------------------------------------


def test_a_target_that_does_not_answer_in_time_is_transient(target):
    with pytest.raises(AdapterError) as caught:
        http(target.url("/hang"), timeout_s=0.2).deliver(b"{}", dict(REPLAY_HEADERS))
    assert not caught.value.permanent
    assert not caught.value.unreachable  # it may have processed the request
    assert "no answer within 0.2s" in caught.value.message


def test_a_refused_connection_is_transient_and_unreachable():
    url = f"http://127.0.0.1:{unused_port()}/orders"
    with pytest.raises(AdapterError) as caught:
        http(url).deliver(b"{}", dict(REPLAY_HEADERS))
    assert not caught.value.permanent
    assert caught.value.unreachable
    assert url in caught.value.message


def test_a_password_in_the_url_stays_out_of_messages():
    url = f"http://andon:s3cret@127.0.0.1:{unused_port()}/orders"
    with pytest.raises(AdapterError) as caught:
        http(url).deliver(b"{}", {})
    assert "s3cret" not in caught.value.message
    assert "andon:***@" in caught.value.message


# --- batches ----------------------------------------------------------------------------------


def test_a_batch_reuses_one_kept_alive_connection(target):
    items = [
        (f'{{"n": {n}}}'.encode(), {**REPLAY_HEADERS, "X-Andon-Replay": str(n)}) for n in range(200)
    ]
    outcomes = http(target.url("/ok")).deliver_many(items)
    assert [type(o) for o in outcomes] == [DeliveryResult] * 200
    assert [r.body for r in target.received] == [body for body, _ in items]
    assert target.connections == 1


def test_a_batch_answers_each_item_in_order(target):
    target.fail_first = 1
    outcomes = http(target.url("/flaky")).deliver_many([(b"a", {}), (b"b", {}), (b"c", {})])
    assert isinstance(outcomes[0], AdapterError) and not outcomes[0].permanent
    assert [o.status_code for o in outcomes[1:]] == [201, 201]
    assert [r.body for r in target.received] == [b"a", b"b", b"c"]


def test_a_batch_stops_trying_once_the_target_is_unreachable():
    adapter = http(f"http://127.0.0.1:{unused_port()}/orders")
    outcomes = adapter.deliver_many([(b"a", {}), (b"b", {}), (b"c", {})])
    assert all(isinstance(o, AdapterError) and not o.permanent for o in outcomes)
    assert outcomes[1].message.startswith("not attempted: ")


def test_an_empty_batch_answers_nothing(target):
    assert http(target.url("/ok")).deliver_many([]) == []
    assert target.received == []


# --- the adapter cache ------------------------------------------------------------------------


def test_get_adapter_keeps_one_adapter_per_config_and_thread(target):
    config = {"kind": "http", "url": target.url("/ok")}
    adapter = get_adapter(config)
    assert get_adapter(dict(config, method="post")) is adapter  # normalises alike
    assert get_adapter({**config, "timeout_s": 3}) is not adapter
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(get_adapter(config)))
    thread.start()
    thread.join()
    assert other[0] is not adapter
    close_adapters()
    assert get_adapter(config) is not adapter
    assert get_adapter(config).deliver(b"{}", {}).status_code == 200
