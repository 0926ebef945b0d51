"""The exception tree of opcache-guard.

Every error the tool raises on purpose derives from ``GuardError``, so the command line can
print one clear line and exit with the right status instead of a traceback::

    GuardError
    ├── ConfigError          invalid configuration or command-line value
    ├── FastCGIError         transport and protocol failures talking to a pool
    │   ├── ConnectError     nothing accepts connections at the address
    │   ├── ResolveError     the host name of the address does not resolve
    │   ├── FastCGITimeout   connect or read timed out
    │   └── ProtocolError    malformed, truncated or oversized records from the peer
    ├── ProbeError           a pool answered, but not with a usable reading
    ├── StateError           the local state store failed
    ├── LabError             starting or stopping the local lab failed
    ├── LoadBalancerError    a load balancer backend failed
    ├── SlotError            a slot backend failed or a slot could not be had
    ├── FpmControlError      restarting a php-fpm master failed
    │   └── FpmCheckError    a check before the restart failed; nothing was stopped
    ├── RestartError         the safe restart state machine stopped on a failure
    └── StressError          the reproduction harness failed to run

Third-party exceptions are wrapped with ``raise ... from`` so the cause stays visible in
debug logs.
"""


class GuardError(Exception):
    """Root of all errors raised by opcache-guard on purpose."""


class ConfigError(GuardError):
    """A configuration file or command-line value is invalid."""


class FastCGIError(GuardError):
    """Talking FastCGI to a pool failed.

    ``reason`` is the cause alone, without the address, for callers that name the pool
    themselves.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class ConnectError(FastCGIError):
    """Nothing accepts connections at the address."""


class ResolveError(FastCGIError):
    """The host name of an address does not resolve."""


class FastCGITimeout(FastCGIError):
    """Connecting or waiting for the reply timed out."""


class ProtocolError(FastCGIError):
    """The peer sent malformed, truncated or oversized FastCGI records."""


class ProbeError(GuardError):
    """A pool replied, but the reply is not a usable reading."""


class StateError(GuardError):
    """The local state store could not be read or written."""


class LabError(GuardError):
    """Starting, inspecting or stopping the local lab failed."""


class LoadBalancerError(GuardError):
    """A load balancer backend failed to read or change a server's state."""


class SlotError(GuardError):
    """A slot backend failed, or no slot could be had in time."""


class FpmControlError(GuardError):
    """Restarting or inspecting a php-fpm master failed."""


class FpmCheckError(FpmControlError):
    """A check before the restart failed; the running master was not touched."""


class RestartError(GuardError):
    """A safe restart stopped because a step failed."""


class StressError(GuardError):
    """The reproduction harness could not run."""
