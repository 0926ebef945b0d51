"""php-fpm masters: local ones for the lab and tests, and the restart backends.

Importing this package registers every restart backend.
"""

from opcache_guard.fpm import command, master, systemd  # noqa: F401 - registers the backends
