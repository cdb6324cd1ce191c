"""Sensitive payload fields are masked for non-admins, by dotted path."""

from __future__ import annotations

import orjson

from integrations.masking import MASK, mask_headers, mask_value, render_payload

PAYLOAD = {
    "order": "WO-1",
    "customer": {"name": "ACME", "email": "buyer@acme.example"},
    "lines": [{"sku": "A", "price": 10.5}, {"sku": "B", "price": 3}],
}


def test_it_masks_a_nested_field():
    masked = mask_value(PAYLOAD, ["customer.email"])
    assert masked["customer"] == {"name": "ACME", "email": MASK}
    assert PAYLOAD["customer"]["email"] == "buyer@acme.example"


def test_a_star_masks_every_list_item():
    masked = mask_value(PAYLOAD, ["$.lines.*.price"])
    assert [line["price"] for line in masked["lines"]] == [MASK, MASK]
    assert [line["sku"] for line in masked["lines"]] == ["A", "B"]


def test_a_missing_path_changes_nothing():
    assert mask_value(PAYLOAD, ["customer.phone", "nope.deeper"]) == PAYLOAD


def test_headers_are_masked_case_insensitively():
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
    assert mask_headers(headers, ["headers.authorization"]) == {
        "Authorization": MASK,
        "Content-Type": "application/json",
    }


def test_render_masks_json_only_when_asked():
    body = orjson.dumps(PAYLOAD)
    assert "buyer@acme.example" in render_payload(
        body, "application/json", ["customer.email"], masked=False
    )
    shown = render_payload(body, "application/json", ["customer.email"], masked=True)
    assert "buyer@acme.example" not in shown and MASK in shown


def test_a_non_json_body_with_sensitive_fields_is_hidden_from_non_admins():
    body = b"<order><email>buyer@acme.example</email></order>"
    assert "buyer" not in render_payload(body, "application/xml", ["email"], masked=True)
    assert "buyer" in render_payload(body, "application/xml", ["email"], masked=False)
