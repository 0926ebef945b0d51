"""Read and check the keys of an ``[lb]`` section, with errors that name the key and the fix."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opcache_guard.errors import ConfigError

DEFAULT_TIMEOUT = 5.0


def check_keys(section: dict[str, Any], known: Collection[str], backend: str) -> None:
    """Reject keys a backend does not know, so a typo never falls back to a default.

    Raises:
        ConfigError: the section has a key outside ``known`` and ``backend``.
    """
    unknown = sorted(set(section) - set(known) - {"backend"})
    if unknown:
        raise ConfigError(f"[lb] {', '.join(unknown)}: unknown key for backend {backend}; "
                          f"known keys: backend, {', '.join(sorted(known))}")


def string(section: dict[str, Any], key: str, default: str | None = None) -> str:
    """Return a non-empty string key, or the default when the key is absent.

    Raises:
        ConfigError: the key is missing without a default, empty, or not a string.
    """
    value = section.get(key, default)
    if value is None:
        raise ConfigError(f"[lb] {key} is missing; set it in the [lb] section")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"[lb] {key} = {value!r} must be a non-empty string")
    return value.strip()


def timeout(section: dict[str, Any], default: float = DEFAULT_TIMEOUT) -> float:
    """Return ``timeout`` in seconds.

    Raises:
        ConfigError: the value is not a positive number.
    """
    value = section.get("timeout", default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"[lb] timeout = {value!r} must be a positive number of seconds")
    return float(value)


def string_list(section: dict[str, Any], key: str, required: bool = True,
                allow_single: bool = False) -> list[str]:
    """Return a key whose value is a non-empty list of strings.

    Arguments:
        section: the ``[lb]`` section.
        key: the key to read.
        required: whether a missing key is an error.
        allow_single: whether a single string is accepted as a list of one; leave it off for
            argument lists, where a string would be one program name with spaces in it.

    Returns:
        The list, or an empty list when the key is absent and not required.

    Raises:
        ConfigError: the key is missing while required, empty, or holds something else.
    """
    value = section.get(key)
    if value is None:
        if required:
            raise ConfigError(f"[lb] {key} is missing; set it in the [lb] section")
        return []
    if isinstance(value, str):
        if not allow_single:
            raise ConfigError(f"[lb] {key} = {value!r} must be a list of arguments, not one "
                              f"string; write {value.split()!r}")
        value = [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(item, str) and item for item in value)):
        raise ConfigError(f"[lb] {key} = {value!r} must be a non-empty list of strings")
    return list(value)
