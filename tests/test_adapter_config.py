"""Adapter configuration: each kind's fields, defaults and errors; replay policy; validation."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from integrations.adapters import (
    ADAPTERS,
    AdapterConfigError,
    ConfigError,
    HttpAdapter,
    build_adapter,
    validate_adapter_config,
    validate_replay_policy,
)

# --- http ---------------------------------------------------------------------------------


def test_http_fills_in_method_headers_and_timeout():
    config = validate_adapter_config({"kind": "http", "url": "http://127.0.0.1:9100/orders"})
    assert config == {
        "kind": "http",
        "url": "http://127.0.0.1:9100/orders",
        "method": "POST",
        "headers": {},
        "timeout_s": 10,
    }


def test_http_keeps_a_full_config_and_upper_cases_the_method():
    config = validate_adapter_config(
        {
            "kind": "http",
            "url": "https://mes.example/api/orders",
            "method": "put",
            "headers": {"Authorization": "Basic abc", "X-Plant": "p1"},
            "timeout_s": 2.5,
        }
    )
    assert config["method"] == "PUT"
    assert config["headers"] == {"Authorization": "Basic abc", "X-Plant": "p1"}
    assert config["timeout_s"] == 2.5


@pytest.mark.parametrize(
    ("config", "field", "words"),
    [
        ({"kind": "http"}, "url", "is required"),
        ({"kind": "http", "url": "ftp://host/x"}, "url", "must be an http(s) URL"),
        ({"kind": "http", "url": "http:///no-host"}, "url", "must be an http(s) URL"),
        ({"kind": "http", "url": "http://host:99999/"}, "url", "must be an http(s) URL"),
        ({"kind": "http", "url": "orders"}, "url", "must be an http(s) URL"),
        ({"kind": "http", "url": 42}, "url", "must be a string"),
        ({"kind": "http", "url": "http://h/", "method": "GET"}, "method", "POST, PUT, PATCH"),
        ({"kind": "http", "url": "http://h/", "headers": ["a"]}, "headers", "must be a mapping"),
        ({"kind": "http", "url": "http://h/", "headers": {"X-N": 1}}, "headers.X-N", "string"),
        (
            {"kind": "http", "url": "http://h/", "headers": {"Bad Name": "v"}},
            "headers.Bad Name",
            "header name",
        ),
        (
            {"kind": "http", "url": "http://h/", "headers": {"Idempotency-Key": "x"}},
            "headers.Idempotency-Key",
            "set by Andon",
        ),
        ({"kind": "http", "url": "http://h/", "timeout_s": 0}, "timeout_s", "greater than 0"),
        ({"kind": "http", "url": "http://h/", "timeout_s": 301}, "timeout_s", "at most 300"),
        ({"kind": "http", "url": "http://h/", "timeout_s": "10s"}, "timeout_s", "a number"),
        ({"kind": "http", "url": "http://h/", "timeout_s": True}, "timeout_s", "a number"),
        ({"kind": "http", "url": "http://h/", "verb": "POST"}, "verb", "unknown field"),
    ],
)
def test_http_rejects_a_bad_config_naming_the_field(config, field, words):
    with pytest.raises(AdapterConfigError) as caught:
        validate_adapter_config(config)
    assert caught.value.field == field
    assert words in caught.value.message


# --- mqtt ---------------------------------------------------------------------------------


def test_mqtt_fills_in_port_and_qos():
    config = validate_adapter_config({"kind": "mqtt", "host": "127.0.0.1", "topic": "eam/alerts"})
    assert config == {
        "kind": "mqtt",
        "host": "127.0.0.1",
        "port": 1883,
        "topic": "eam/alerts",
        "qos": 1,
    }


def test_mqtt_accepts_qos_0_and_a_tls_port():
    config = validate_adapter_config(
        {"kind": "mqtt", "host": "broker.plant1", "port": 8883, "topic": "a/b", "qos": 0}
    )
    assert (config["port"], config["qos"]) == (8883, 0)


@pytest.mark.parametrize(
    ("config", "field", "words"),
    [
        ({"kind": "mqtt", "topic": "a"}, "host", "is required"),
        ({"kind": "mqtt", "host": "mqtt://h", "topic": "a"}, "host", "host name"),
        ({"kind": "mqtt", "host": "h"}, "topic", "is required"),
        ({"kind": "mqtt", "host": "h", "topic": "a/+/c"}, "topic", "wildcards"),
        ({"kind": "mqtt", "host": "h", "topic": "a/#"}, "topic", "wildcards"),
        ({"kind": "mqtt", "host": "h", "topic": "a", "port": 0}, "port", "between 1 and 65535"),
        ({"kind": "mqtt", "host": "h", "topic": "a", "port": 70000}, "port", "between 1"),
        ({"kind": "mqtt", "host": "h", "topic": "a", "port": "1883"}, "port", "an integer"),
        ({"kind": "mqtt", "host": "h", "topic": "a", "qos": 3}, "qos", "one of 0, 1, 2"),
        ({"kind": "mqtt", "host": "h", "topic": "a", "retain": True}, "retain", "unknown field"),
    ],
)
def test_mqtt_rejects_a_bad_config_naming_the_field(config, field, words):
    with pytest.raises(AdapterConfigError) as caught:
        validate_adapter_config(config)
    assert caught.value.field == field
    assert words in caught.value.message


# --- amqp ---------------------------------------------------------------------------------


def test_amqp_defaults_to_the_default_exchange():
    config = validate_adapter_config(
        {"kind": "amqp", "url": "amqp://guest:guest@127.0.0.1:5672/", "routing_key": "orders"}
    )
    assert config == {
        "kind": "amqp",
        "url": "amqp://guest:guest@127.0.0.1:5672/",
        "exchange": "",
        "routing_key": "orders",
    }


def test_amqp_allows_an_empty_routing_key_on_a_named_exchange():
    config = validate_adapter_config(
        {"kind": "amqp", "url": "amqps://broker/vhost", "exchange": "fanout-x", "routing_key": ""}
    )
    assert config["exchange"] == "fanout-x"


@pytest.mark.parametrize(
    ("config", "field", "words"),
    [
        ({"kind": "amqp", "routing_key": "q"}, "url", "is required"),
        ({"kind": "amqp", "url": "http://h/", "routing_key": "q"}, "url", "amqp:// or amqps://"),
        ({"kind": "amqp", "url": "amqp://"}, "url", "amqp:// or amqps://"),
        ({"kind": "amqp", "url": "amqp://h"}, "routing_key", "is required"),
        ({"kind": "amqp", "url": "amqp://h", "routing_key": 7}, "routing_key", "a string"),
        ({"kind": "amqp", "url": "amqp://h", "routing_key": ""}, "routing_key", "name the queue"),
        (
            {"kind": "amqp", "url": "amqp://h", "routing_key": "q", "exchange": 1},
            "exchange",
            "string",
        ),
        ({"kind": "amqp", "url": "amqp://h", "routing_key": "q", "queue": "q"}, "queue", "unknown"),
    ],
)
def test_amqp_rejects_a_bad_config_naming_the_field(config, field, words):
    with pytest.raises(AdapterConfigError) as caught:
        validate_adapter_config(config)
    assert caught.value.field == field
    assert words in caught.value.message


# --- the registry ---------------------------------------------------------------------------


def test_the_registry_holds_the_three_contract_kinds():
    assert set(ADAPTERS) == {"http", "mqtt", "amqp"}
    assert all(ADAPTERS[kind].kind == kind for kind in ADAPTERS)


def test_an_unknown_kind_lists_the_valid_ones():
    with pytest.raises(AdapterConfigError) as caught:
        validate_adapter_config({"kind": "smtp", "to": "ops@example"})
    assert caught.value.field == "kind"
    assert "'smtp'" in caught.value.message
    assert "http, mqtt, amqp" in caught.value.message


def test_a_config_without_kind_is_refused():
    with pytest.raises(AdapterConfigError) as caught:
        validate_adapter_config({"url": "http://h/"})
    assert caught.value.field == "kind"


def test_a_config_that_is_not_a_mapping_is_refused():
    with pytest.raises(AdapterConfigError, match="must be a mapping"):
        validate_adapter_config(["http"])


def test_an_adapter_class_refuses_another_kinds_config():
    with pytest.raises(AdapterConfigError) as caught:
        HttpAdapter.validate_config({"kind": "mqtt", "url": "http://h/"})
    assert caught.value.field == "kind"


def test_build_adapter_gives_the_kind_its_normalised_config():
    adapter = build_adapter({"kind": "http", "url": "http://127.0.0.1:9100/orders"})
    assert isinstance(adapter, HttpAdapter)
    assert adapter.config["method"] == "POST"


# --- replay policy ---------------------------------------------------------------------------


def test_an_empty_replay_policy_gets_the_defaults():
    assert validate_replay_policy({}) == {"max_attempts": 5, "backoff_s": 30, "rate_per_s": 10}


def test_a_replay_policy_keeps_its_values_and_approval_threshold():
    policy = validate_replay_policy(
        {"max_attempts": 100, "backoff_s": 0, "rate_per_s": 0.5, "approval_above": 250}
    )
    assert policy == {"max_attempts": 100, "backoff_s": 0, "rate_per_s": 0.5, "approval_above": 250}


@pytest.mark.parametrize(
    ("policy", "field", "words"),
    [
        ({"max_attempts": 0}, "max_attempts", "between 1 and 100"),
        ({"max_attempts": 101}, "max_attempts", "between 1 and 100"),
        ({"max_attempts": 2.5}, "max_attempts", "an integer"),
        ({"backoff_s": -1}, "backoff_s", "at least 0"),
        ({"rate_per_s": 0}, "rate_per_s", "greater than 0"),
        ({"rate_per_s": "fast"}, "rate_per_s", "a number"),
        ({"approval_above": 0}, "approval_above", "at least 1"),
        ({"retries": 3}, "retries", "unknown field"),
    ],
)
def test_a_bad_replay_policy_is_refused_naming_the_field(policy, field, words):
    with pytest.raises(ConfigError) as caught:
        validate_replay_policy(policy)
    assert caught.value.field == field
    assert words in caught.value.message


# --- Connector.clean (what the admin's form runs) ---------------------------------------------


def test_clean_normalises_a_valid_adapter_and_replay_policy(landscape):
    connector = landscape["c1"]
    connector.adapter = {"kind": "mqtt", "host": "127.0.0.1", "topic": "orders"}
    connector.replay_policy = {"max_attempts": 3}
    connector.full_clean()
    assert connector.adapter["qos"] == 1
    assert connector.replay_policy == {"max_attempts": 3, "backoff_s": 30, "rate_per_s": 10}


def test_clean_accepts_a_connector_without_adapter(landscape):
    landscape["c2"].full_clean()
    assert landscape["c2"].adapter == {}


def test_clean_names_the_bad_field_of_each_config(landscape):
    connector = landscape["c1"]
    connector.adapter = {"kind": "http", "url": "ftp://x"}
    connector.replay_policy = {"rate_per_s": 0}
    connector.sensitive_fields = ["customer..email"]
    with pytest.raises(ValidationError) as caught:
        connector.full_clean()
    errors = caught.value.message_dict
    assert "url: must be an http(s) URL" in errors["adapter"][0]
    assert "rate_per_s" in errors["replay_policy"][0]
    assert "sensitive_fields[0]" in errors["sensitive_fields"][0]


def test_the_admin_refuses_a_connector_with_a_bad_adapter(admin_client, landscape):
    connector = landscape["c1"]
    response = admin_client.post(
        f"/admin/integrations/connector/{connector.pk}/change/",
        {
            "key": connector.key,
            "name": "",
            "status": "active",
            "source": landscape["erp"].pk,
            "target": landscape["mes1"].pk,
            "flow": "order-to-production",
            "pattern": "api",
            "criticality": "critical",
            "latency_slo_ms": "2000",
            "adapter": '{"kind": "mqtt", "host": "127.0.0.1", "topic": "a/#"}',
            "replay_policy": "{}",
            "sensitive_fields": "[]",
        },
    )
    assert response.status_code == 200
    assert b"wildcards" in response.content
    connector.refresh_from_db()
    assert connector.adapter == {}


def test_the_admin_saves_a_connector_with_its_adapter_normalised(admin_client, landscape):
    connector = landscape["c1"]
    response = admin_client.post(
        f"/admin/integrations/connector/{connector.pk}/change/",
        {
            "key": connector.key,
            "name": "Order release",
            "status": "active",
            "source": landscape["erp"].pk,
            "target": landscape["mes1"].pk,
            "flow": "order-to-production",
            "pattern": "api",
            "criticality": "critical",
            "latency_slo_ms": "2000",
            "adapter": '{"kind": "http", "url": "http://127.0.0.1:9100/orders"}',
            "replay_policy": '{"max_attempts": 7}',
            "sensitive_fields": '["customer.email"]',
        },
    )
    assert response.status_code == 302
    connector.refresh_from_db()
    assert connector.adapter["method"] == "POST"
    assert connector.adapter["timeout_s"] == 10
    assert connector.replay_policy["max_attempts"] == 7
    assert connector.plant == landscape["p1"]
