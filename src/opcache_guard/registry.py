"""Backends chosen by name in the configuration, one registry per pluggable axis."""

from __future__ import annotations

import importlib
from typing import Generic, TypeVar

from opcache_guard.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Backend classes of one axis, by the name that ``[SECTION] backend = ...`` gives.

    Arguments:
        section: the configuration section, such as "lb", named in errors.
        kind: what a backend is, such as "load balancer backend", named in errors.
        package: the package whose import registers every backend of the axis.
    """

    def __init__(self, section: str, kind: str, package: str) -> None:
        self.section = section
        self.kind = kind
        self.package = package
        self._backends: dict[str, type[T]] = {}

    def register(self, backend: type[T]) -> type[T]:
        """Class decorator that makes a backend selectable by its ``name`` attribute."""
        # Every axis base declares a "name" class attribute, which a TypeVar cannot express.
        name: str = getattr(backend, "name")  # noqa: B009
        self._backends[name] = backend
        return backend

    def lookup(self, name: object) -> type[T]:
        """Return the backend class called name.

        Raises:
            ConfigError: no backend has that name; the message lists the known ones.
        """
        importlib.import_module(self.package)
        if not isinstance(name, str) or name not in self._backends:
            known = ", ".join(sorted(self._backends))
            raise ConfigError(f"[{self.section}] backend = {name!r} is not a known {self.kind}; "
                              f"use one of: {known}")
        return self._backends[name]
