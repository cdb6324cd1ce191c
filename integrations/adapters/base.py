"""The adapter contract, its errors, and the typed config reader shared with the landscape."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    """A delivery failed; ``permanent`` says that retrying the same payload cannot help."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


@dataclass(frozen=True)
class DeliveryResult:
    """What the target answered to a delivery it accepted."""

    latency_ms: int
    status_code: int | None = None
    detail: str = ""


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
    """Delivers one captured payload to a connector's target.

    The contract every adapter keeps:

    - ``kind`` is the name a connector's ``adapter`` config selects it by
      (``{"kind": "http", ...}``); ``fields`` lists the other keys it accepts.
    - ``validate_config(config)`` returns the normalised config (``kind`` included,
      defaults filled in) or raises :class:`AdapterConfigError` naming the field.
      It does no I/O, so a landscape can be checked offline.
    - ``deliver(body, headers)`` sends ``body`` (the original bytes) with ``headers``
      (already holding ``Content-Type``, ``Idempotency-Key``, ``X-Andon-Replay`` and
      ``traceparent``) to the target once, and returns a :class:`DeliveryResult` when
      the target accepted it. On failure it raises :class:`AdapterError` whose
      ``permanent`` flag says whether retrying can help: True when the target
      rejected the payload itself (e.g. HTTP 4xx other than 408/429), False for
      timeouts, refused connections, 5xx and broker unavailability.
    - An adapter never retries on its own; the replay workflow owns attempts,
      backoff and rate (the connector's replay policy).

    To add an adapter: subclass this, set ``kind`` and ``fields``, implement both
    methods, register it in ``integrations.adapters.ADAPTERS``, document its fields
    in the README and cover good and bad configs in ``tests/test_adapter_config.py``.
    """

    kind: ClassVar[str] = ""
    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = self.validate_config(config)

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return the normalised config with defaults, or raise AdapterConfigError."""
        raise NotImplementedError(f"{cls.__name__} must implement validate_config")

    def deliver(self, body: bytes, headers: dict[str, str]) -> DeliveryResult:
        """Send ``body`` with ``headers`` to the target once (see the class docstring)."""
        raise NotImplementedError(
            f"{type(self).__name__}.deliver: delivery through {self.kind!r} adapters is not "
            "implemented yet; adapters only validate their configuration for now"
        )

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
