"""Slot backends. Importing this package registers every backend."""

from opcache_guard.slots import memory  # noqa: F401 - registers the backend
