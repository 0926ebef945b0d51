"""Load balancer backends. Importing this package registers every backend."""

from opcache_guard.lb import memory  # noqa: F401 - registers the backend
