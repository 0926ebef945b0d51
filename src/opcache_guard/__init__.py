"""opcache-guard: watch PHP-FPM OPcache across a fleet and restart servers safely."""

__version__ = "0.1.0"
