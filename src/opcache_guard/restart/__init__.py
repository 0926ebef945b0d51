"""The safe restart: a state machine with a journal, its repair, and the host configuration.

``SafeRestart`` runs one restart; ``repair`` completes runs a crash left unfinished;
``unresolved_runs`` lists FAILED and unfinished runs for ``check`` to report.
"""

from opcache_guard.restart.journal import Journal, unresolved_runs
from opcache_guard.restart.machine import Outcome, SafeRestart
from opcache_guard.restart.repair import repair
from opcache_guard.restart.settings import Backends, HostConfig, host_config, open_backends
from opcache_guard.restart.states import TRANSITIONS, Run, State, check_transition

__all__ = [
    "TRANSITIONS", "Backends", "HostConfig", "Journal", "Outcome", "Run", "SafeRestart", "State",
    "check_transition", "host_config", "open_backends", "repair", "unresolved_runs",
]
