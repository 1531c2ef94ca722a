"""What every group's schema shares: the error type and the two checks `__post_init__` uses."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key."""


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def _one_of(value: str, key: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, f"must be one of {list(choices)}, got {value!r}")
