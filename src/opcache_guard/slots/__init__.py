"""Slot backends. Importing this package registers every backend."""

from opcache_guard.slots import etcd, memory, poolcounter, sqlite
from opcache_guard.slots.base import create, create_from

__all__ = ["create", "create_from", "etcd", "memory", "poolcounter", "sqlite"]
