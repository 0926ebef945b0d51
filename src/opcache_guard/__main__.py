"""Allow ``python -m opcache_guard``."""

from opcache_guard.cli import main

main()
