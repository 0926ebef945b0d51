"""Operator-given commands, for load balancers that none of the other backends drive.

Configuration::

    [lb]
    backend = "command"
    pool_name = "web"                                    # the value of {pool}; default ""
    depool = ["/usr/local/bin/lbctl", "depool", "{pool}", "{host}"]
    pool = ["/usr/local/bin/lbctl", "pool", "{pool}", "{host}"]
    state = ["/usr/local/bin/lbctl", "state", "{pool}", "{host}"]
    in_flight = ["/usr/local/bin/lbctl", "connections", "{host}"]   # optional
    disable = ["/usr/local/bin/lbctl", "maint", "{host}"]           # optional
    timeout = 10.0

Each argument is formatted on its own with ``str.format`` and the fields ``{host}`` and
``{pool}`` (``{{`` and ``}}`` give literal braces), and the list runs without a shell. The
``state`` command prints one of ``pooled``, ``draining``, ``depooled`` or ``inactive`` as the
first word of its output; ``in_flight`` prints an integer. A command that exits non-zero or
runs past the timeout raises ``LoadBalancerError`` with the end of its standard error.

The changes are only as idempotent and as confirmed as the operator's commands make them:
this backend reads ``state`` back after each change and raises unless it shows the result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from typing import Any

from opcache_guard.errors import ConfigError, LoadBalancerError
from opcache_guard.lb import settings
from opcache_guard.lb.base import LbState, LoadBalancer, register

log = logging.getLogger(__name__)

_KEYS = ("pool_name", "depool", "pool", "state", "in_flight", "disable", "timeout")
_STATES = {state.value: state for state in LbState}
#: The states each change may leave behind; draining counts as depooled for a depool.
_ACCEPTED = {
    "depool": (LbState.DRAINING, LbState.DEPOOLED),
    "disable": (LbState.DEPOOLED,),
    "pool": (LbState.POOLED,),
}
_TAIL_CHARS = 400


def render(template: list[str], fields: dict[str, str]) -> list[str]:
    """Format each argument of a command on its own with the given fields.

    Raises:
        ConfigError: an argument names an unknown field or has unbalanced braces.
    """
    argv = []
    for argument in template:
        try:
            argv.append(argument.format(**fields))
        except (KeyError, IndexError, ValueError) as error:
            known = ", ".join("{" + name + "}" for name in sorted(fields))
            raise ConfigError(f"[lb] command argument {argument!r} is not a valid template "
                              f"({error}); use {known}, and {{{{ }}}} for literal braces") from error
    return argv


@register
class CommandLoadBalancer(LoadBalancer):
    """Run the operator's commands to read and change one host's state."""

    name = "command"

    def __init__(self, host: str, commands: dict[str, list[str]], timeout: float = 10.0,
                 dry_run: bool = False) -> None:
        super().__init__(host, dry_run)
        self.commands = commands
        self.timeout = timeout

    @classmethod
    def from_config(cls, host: str, section: dict[str, Any], dry_run: bool) -> LoadBalancer:
        """Build the backend from ``[lb]``; see the module docstring for the keys.

        Raises:
            ConfigError: a key is missing, unknown or invalid, or a template is malformed.
        """
        settings.check_keys(section, _KEYS, cls.name)
        fields = {"host": host, "pool": str(section.get("pool_name", ""))}
        commands = {}
        for key in ("depool", "pool", "state"):
            commands[key] = render(settings.string_list(section, key), fields)
        for key in ("in_flight", "disable"):
            template = settings.string_list(section, key, required=False)
            if template:
                commands[key] = render(template, fields)
        return cls(host, commands, settings.timeout(section, default=10.0), dry_run)

    def state(self) -> LbState:
        """Run the state command and read the first word of its output.

        Raises:
            LoadBalancerError: the command failed, timed out, or printed no known state.
        """
        output = self._run("state")
        words = output.split()
        first = words[0].lower() if words else ""
        if first not in _STATES:
            raise LoadBalancerError(f"{self.describe()}: state command {self.commands['state']} "
                                    f"printed {output.strip()[:80]!r}; its first word must be "
                                    f"one of {', '.join(_STATES)}")
        return _STATES[first]

    def in_flight(self) -> int | None:
        """Run the in_flight command, or return None when none is configured.

        Raises:
            LoadBalancerError: the command failed, timed out, or printed no integer.
        """
        if "in_flight" not in self.commands:
            return None
        output = self._run("in_flight").strip()
        try:
            count = int(output)
        except ValueError as error:
            raise LoadBalancerError(f"{self.describe()}: in_flight command "
                                    f"{self.commands['in_flight']} printed {output[:80]!r}, "
                                    "not an integer") from error
        if count < 0:
            raise LoadBalancerError(f"{self.describe()}: in_flight command printed {count}, "
                                    "a negative count")
        return count

    def depool(self) -> None:
        """Run the depool command and check that the host takes no new requests.

        Raises:
            LoadBalancerError: the host is inactive, or a command failed or timed out.
        """
        self._change("depool")

    def disable(self) -> None:
        """Run the disable command if one is configured.

        Raises:
            LoadBalancerError: the host is inactive, or a command failed or timed out.
        """
        if "disable" in self.commands:
            self._change("disable")

    def pool(self) -> None:
        """Run the pool command and check that the host is pooled.

        Raises:
            LoadBalancerError: the host is inactive, or a command failed or timed out.
        """
        self._change("pool")

    def _change(self, action: str) -> None:
        before = self.state()
        if before is LbState.INACTIVE:
            raise LoadBalancerError(f"{self.describe()} is inactive; opcache-guard never "
                                    f"changes an inactive host, so an operator must {action} it")
        if before in _ACCEPTED[action]:
            log.info("kept %s %s: nothing to %s", self.describe(), before.value, action)
            return
        if self.dry_run:
            log.info("would run %s for %s (dry run)", self.commands[action], self.describe())
            return

        log.info("running %s for %s", self.commands[action], self.describe())
        self._run(action)
        after = self.state()
        if after not in _ACCEPTED[action]:
            raise LoadBalancerError(f"{self.describe()}: state is {after.value} after the "
                                    f"{action} command {self.commands[action]} succeeded")

    def _run(self, action: str) -> str:
        argv = self.commands[action]
        try:
            # A session of its own lets a timeout kill the command's children too, which
            # would otherwise keep the output pipes open and the wait blocked.
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True,
                                       start_new_session=True)
        except OSError as error:
            raise LoadBalancerError(f"{self.describe()}: {action} command {argv} could not "
                                    f"start: {error}") from error
        try:
            stdout, stderr = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired as error:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            _, stderr = process.communicate()
            raise LoadBalancerError(f"{self.describe()}: {action} command {argv} timed out "
                                    f"after {self.timeout:g} s{_tail(stderr)}") from error
        if process.returncode != 0:
            raise LoadBalancerError(f"{self.describe()}: {action} command {argv} exited with "
                                    f"status {process.returncode}{_tail(stderr)}")
        return stdout


def _tail(stderr: str | None) -> str:
    text = (stderr or "").strip()
    if not text:
        return ""
    return f"; stderr: {text[-_TAIL_CHARS:]}"
