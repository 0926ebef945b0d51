"""Run one safe restart that kills itself with SIGKILL on entering a chosen state.

Usage: restart_child.py HOST_CONFIG, with OPCACHE_GUARD_TEST_KILL_AT=STATE_NAME. Only the
tests use this fault-injection hook.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from restart_support import open_host

from opcache_guard.restart import SafeRestart, State


def kill_on_entering(target: str) -> None:
    def hook(state: State) -> None:
        if state.name == target:
            os.kill(os.getpid(), signal.SIGKILL)
    return hook  # type: ignore[return-value]


def main() -> int:
    logging.basicConfig(level=logging.INFO)
    host, backends = open_host(Path(sys.argv[1]))
    target = os.environ["OPCACHE_GUARD_TEST_KILL_AT"]
    outcome = SafeRestart(host, backends, reason="kill test",
                          on_enter=kill_on_entering(target)).run()  # type: ignore[arg-type]
    print(outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
