"""Fill a lab pool's OPcache: deploy generated PHP files and rewrite them in place.

Each file is a long run of arithmetic statements with distinct integer literals. On PHP 8.2
one takes about 80 KB of OPcache memory (72 files took about 6 MB), so a few dozen files fill
a small cache. Yet the files add almost nothing to the interned strings buffer, which would
otherwise fill first. A rewrite gives a file new content and a new modification time, as an
rsync deploy does, so OPcache compiles it again and the old copy becomes wasted memory. Modification times
are set in the past on purpose: OPcache does not cache a file modified within
``opcache.file_update_protection`` seconds (2 by default).
"""

from __future__ import annotations

import time
from pathlib import Path

from opcache_guard.errors import FastCGIError, LabError
from opcache_guard.fastcgi import FastCGIClient
from opcache_guard.phpfiles import write_php

FILL_DIR = "fill"
STATEMENTS_PER_FILE = 1000


def render(index: int, version: int) -> str:
    """Return the source of fill file ``index`` at ``version``: distinct literals each time."""
    base = (index * 1_000_003 + version * 7919) * STATEMENTS_PER_FILE
    statements = "\n".join(f"$total = $total + {base + n};" for n in range(STATEMENTS_PER_FILE))
    return (f"<?php\n// opcache-guard lab fill file {index}, version {version}\n"
            f"$total = 0;\n{statements}\necho $total, \"\\n\";\n")


class Filler:
    """Deploys and rewrites fill files in one pool's docroot, requesting each to cache it."""

    def __init__(self, docroot: Path, address: str) -> None:
        self.directory = docroot / FILL_DIR
        self.address = address
        self.versions: dict[int, int] = {}
        self._clock = time.time() - 3600.0

    def _next_mtime(self) -> float:
        self._clock += 1.0
        return self._clock

    def deploy(self, index: int) -> None:
        """Write (or rewrite) file ``index`` with its next version, then request it."""
        self.directory.mkdir(mode=0o755, exist_ok=True)
        version = self.versions.get(index, -1) + 1
        self.versions[index] = version
        path = self.directory / f"fill{index}.php"
        write_php(path, render(index, version), self._next_mtime())
        self.request(path)

    def request(self, path: Path) -> None:
        """Run one file in the pool, which compiles it into OPcache.

        Raises:
            LabError: the pool did not run the file.
        """
        try:
            with FastCGIClient(self.address, read_timeout=10.0) as client:
                reply = client.get(str(path), "/" + path.name)
        except FastCGIError as exc:
            raise LabError(f"filling {path}: {exc}") from exc
        if reply.status != 200:
            raise LabError(f"filling {path}: the pool returned HTTP {reply.status}: "
                           f"{reply.body[:200]!r}")

    def add_files(self, count: int) -> None:
        """Deploy ``count`` new files."""
        start = len(self.versions)
        for index in range(start, start + count):
            self.deploy(index)

    def rewrite(self, count: int) -> None:
        """Rewrite ``count`` existing files in place, oldest versions first."""
        indexes = sorted(self.versions, key=lambda i: (self.versions[i], i))[:count]
        for index in indexes:
            self.deploy(index)
