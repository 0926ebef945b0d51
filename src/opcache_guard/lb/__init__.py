"""Load balancer backends. Importing this package registers every backend."""

from opcache_guard.lb import command, conftool, haproxy, memory

__all__ = ["command", "conftool", "haproxy", "memory"]
