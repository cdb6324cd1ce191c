"""The adapter contract, its errors, and the typed config reader shared with the landscape."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A configuration value is wrong: ``field`` names it (dotted path), ``message`` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def under(self, prefix: str) -> ConfigError:
        """Return the same error with its field under ``prefix`` (``url`` -> ``adapter.url``)."""
        field = f"{prefix}.{self.field}" if self.field else prefix
        return type(self)(field, self.message)


class AdapterConfigError(ConfigError):
    """An adapter configuration is invalid; raised before anything is sent."""


class AdapterError(Exception):
    """A delivery failed; ``permanent`` says that retrying the same payload cannot help.

    ``retry_after_s`` is how long the target asked us to wait (HTTP ``Retry-After``),
    ``status_code`` what an HTTP target answered, and ``unreachable`` says the target
    could not be reached at all, so nothing was sent (a batch stops trying there).
    """

    def __init__(
        self,
        message: str,
        permanent: bool,
        *,
        retry_after_s: float | None = None,
        status_code: int | None = None,
        unreachable: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.retry_after_s = retry_after_s
        self.status_code = status_code
        self.unreachable = unreachable

    def __repr__(self) -> str:
        kind = "permanent" if self.permanent else "transient"
        return f"{type(self).__name__}({self.message!r}, {kind})"


@dataclass(frozen=True)
class DeliveryResult:
    """What the target answered to a delivery it accepted."""

    latency_ms: int
    status_code: int | None = None
    detail: str = ""


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """Return the value of header ``name`` (any case) in ``headers``, or None."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def merge_headers(base: Mapping[str, str], override: Mapping[str, str]) -> dict[str, str]:
    """Return ``base`` with ``override`` on top, a name in any case replacing its twin in base."""
    overridden = {name.lower() for name in override}
    merged = {name: value for name, value in base.items() if name.lower() not in overridden}
    merged.update(override)
    return merged


def not_attempted(cause: AdapterError) -> AdapterError:
    """Return the error for a batch item skipped because the target proved unreachable."""
    return AdapterError(
        f"not attempted: {cause.message}",
        permanent=False,
        retry_after_s=cause.retry_after_s,
        unreachable=True,
    )


def type_name(value: object) -> str:
    """Name a value's type the way a YAML or JSON author thinks of it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


class ConfigReader:
    """Reads typed fields out of a mapping; each failure is a ConfigError naming the field.

    By default the first failure raises. Given an ``errors`` list, the reader records
    every failure there and returns None for the failed field instead, so that a
    caller can report everything wrong with an entry at once. A field whose value
    is null counts as absent.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        *,
        errors: list[ConfigError] | None = None,
        error_class: type[ConfigError] = ConfigError,
    ) -> None:
        self.data = data
        self.errors = errors
        self.error_class = error_class

    def fail(self, field: str, message: str) -> None:
        """Raise, or record, an error about ``field``."""
        error = self.error_class(field, message)
        if self.errors is None:
            raise error
        self.errors.append(error)

    def reject_unknown(self, allowed: Sequence[str]) -> None:
        """Fail for every key that is not in ``allowed``."""
        for key in self.data:
            if key not in allowed:
                self.fail(str(key), f"unknown field (expected one of: {', '.join(allowed)})")

    def _present(self, name: str, required: bool) -> Any:
        value = self.data.get(name)
        if value is None and required:
            self.fail(name, "is required")
        return value

    def string(
        self,
        name: str,
        *,
        required: bool = False,
        default: str | None = None,
        max_length: int | None = None,
        allow_empty: bool = False,
    ) -> str | None:
        """Return a string field (``default`` when absent)."""
        value = self._present(name, required)
        if value is None:
            return default
        if not isinstance(value, str):
            self.fail(name, f"must be a string, not {type_name(value)}")
            return None
        if not allow_empty and not value.strip():
            self.fail(name, "must not be empty")
            return None
        if max_length is not None and len(value) > max_length:
            self.fail(name, f"must be at most {max_length} characters long")
            return None
        return value

    def integer(
        self,
        name: str,
        *,
        required: bool = False,
        default: int | None = None,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        """Return an integer field within ``[minimum, maximum]`` (``default`` when absent)."""
        value = self._present(name, required)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, f"must be an integer, not {type_name(value)}")
            return None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.fail(name, _range_message(minimum, maximum, value))
            return None
        return value

    def number(
        self,
        name: str,
        *,
        required: bool = False,
        default: float | None = None,
        minimum: float | None = None,
        above: float | None = None,
        maximum: float | None = None,
    ) -> float | None:
        """Return a finite number field (``default`` when absent); ``above`` is exclusive."""
        value = self._present(name, required)
        if value is None:
            return default
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or not math.isfinite(value):
            self.fail(name, f"must be a number, not {type_name(value)}")
            return None
        if above is not None and value <= above:
            self.fail(name, f"must be greater than {above:g}, not {value:g}")
            return None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.fail(name, _range_message(minimum, maximum, value))
            return None
        return value

    def choice(
        self,
        name: str,
        choices: Sequence[object],
        *,
        required: bool = False,
        default: object = None,
    ) -> Any:
        """Return a field whose value must be one of ``choices``."""
        value = self._present(name, required)
        if value is None:
            return default
        if isinstance(value, bool) or value not in choices:
            listed = ", ".join(str(c) for c in choices)
            self.fail(name, f"must be one of {listed}, not {value!r}")
            return None
        return value

    def mapping(self, name: str, *, required: bool = False) -> dict[str, Any] | None:
        """Return a mapping field as a dict (None when absent)."""
        value = self._present(name, required)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.fail(name, f"must be a mapping, not {type_name(value)}")
            return None
        return dict(value)

    def string_map(self, name: str) -> dict[str, str] | None:
        """Return a mapping of strings to strings (empty when absent)."""
        if self.data.get(name) is None:
            return {}
        value = self.mapping(name)
        if value is None:
            return None
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                self.fail(f"{name}.{key}", "keys must be non-empty strings")
                return None
            if not isinstance(item, str):
                self.fail(f"{name}.{key}", f"must be a string, not {type_name(item)}")
                return None
        return value

    def string_list(self, name: str) -> list[str] | None:
        """Return a list of distinct non-empty strings (empty when absent)."""
        value = self._present(name, False)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(name, f"must be a list of strings, not {type_name(value)}")
            return None
        seen: set[str] = set()
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.fail(f"{name}[{index}]", f"must be a non-empty string, not {item!r}")
                return None
            if item in seen:
                self.fail(f"{name}[{index}]", f"{item!r} is listed twice")
                return None
            seen.add(item)
        return list(value)


def _range_message(minimum: float | None, maximum: float | None, value: float) -> str:
    if minimum is not None and maximum is not None:
        return f"must be between {minimum:g} and {maximum:g}, not {value:g}"
    if minimum is not None:
        return f"must be at least {minimum:g}, not {value:g}"
    return f"must be at most {maximum:g}, not {value:g}"


class Adapter:
    """Delivers captured payloads to a connector's target.

    The contract every adapter keeps:

    - ``kind`` is the name a connector's ``adapter`` config selects it by
      (``{"kind": "http", ...}``); ``fields`` lists the other keys it accepts.
    - ``validate_config(config)`` returns the normalised config (``kind`` included,
      defaults filled in) or raises :class:`AdapterConfigError` naming the field.
      It does no I/O, so a landscape can be checked offline.
    - ``deliver(body, headers)`` sends ``body`` (the original bytes, never re-encoded)
      with ``headers`` (already holding ``Content-Type``, ``Idempotency-Key``,
      ``X-Andon-Replay`` and ``traceparent``) to the target once, and returns a
      :class:`DeliveryResult` when the target accepted it. On failure it raises
      :class:`AdapterError` whose ``permanent`` flag says whether retrying can help:
      True when the target rejected the payload itself (HTTP 4xx other than
      408/425/429, an unroutable AMQP message), False for timeouts, refused
      connections, 5xx, 408/425/429 and broker unavailability.
    - ``deliver_many([(body, headers), ...])`` does the same for a batch over one
      connection and answers a result or an error per item, in order; it raises
      nothing. Once the target proves unreachable the rest of the batch is not
      tried and each item gets that (transient) error.
    - An adapter keeps its connection open between calls (``get_adapter`` caches
      one per config and thread) until ``close()``; a broken connection is opened
      again on the next delivery.
    - An adapter never retries on its own; the replay workflow owns attempts,
      backoff and rate (the connector's replay policy).

    To add an adapter: subclass this, set ``kind`` and ``fields``, implement
    ``validate_config`` and ``deliver`` (and ``deliver_many``/``close`` when it holds a
    connection), register it in ``integrations.adapters.ADAPTERS``, document its
    fields in the README, and cover good and bad configs in
    ``tests/test_adapter_config.py`` and delivery against a real server in
    ``tests/test_adapters_<kind>.py``.
    """

    kind: ClassVar[str] = ""
    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = self.validate_config(config)

    def __enter__(self) -> Adapter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return the normalised config with defaults, or raise AdapterConfigError."""
        raise NotImplementedError(f"{cls.__name__} must implement validate_config")

    def deliver(self, body: bytes, headers: dict[str, str]) -> DeliveryResult:
        """Send ``body`` with ``headers`` to the target once (see the class docstring)."""
        raise NotImplementedError(f"{type(self).__name__} must implement deliver")

    def deliver_many(
        self, items: Iterable[tuple[bytes, dict[str, str]]]
    ) -> list[DeliveryResult | AdapterError]:
        """Deliver each ``(body, headers)`` in turn; answer a result or an error per item."""
        outcomes: list[DeliveryResult | AdapterError] = []
        unreachable: AdapterError | None = None
        for body, headers in items:
            if unreachable is not None:
                outcomes.append(not_attempted(unreachable))
                continue
            try:
                outcomes.append(self.deliver(body, headers))
            except AdapterError as error:
                outcomes.append(error)
                if error.unreachable:
                    unreachable = error
        return outcomes

    def close(self) -> None:
        """Release the adapter's connections; the next delivery opens them again."""

    @classmethod
    def reader(cls, config: Mapping[str, Any]) -> ConfigReader:
        """Return a raising reader over ``config`` once it is a mapping of known keys."""
        if not isinstance(config, Mapping):
            raise AdapterConfigError("", f"must be a mapping, not {type_name(config)}")
        kind = config.get("kind", cls.kind)
        if kind != cls.kind:
            raise AdapterConfigError("kind", f"must be {cls.kind!r} for {cls.__name__}")
        reader = ConfigReader(config, error_class=AdapterConfigError)
        reader.reject_unknown(("kind", *cls.fields))
        return reader
