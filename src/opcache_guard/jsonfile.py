"""A JSON document in a file, read and written under an exclusive ``flock``.

The in-memory load balancer and slot backends share their state between processes this
way, so a restart run in a child process and the test that watches it see the same state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def locked(path: Path, empty: Callable[[], Any]) -> Iterator[Any]:
    """Yield the decoded document (or ``empty()`` for a new file), locked; write it back on exit."""
    path.touch(exist_ok=True)
    with open(path, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        text = handle.read()
        data = json.loads(text) if text.strip() else empty()
        yield data
        handle.seek(0)
        handle.truncate()
        json.dump(data, handle)
