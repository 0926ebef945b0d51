"""Start, find and stop local processes by process id, safely.

The lab and the tests start real php-fpm, HAProxy, etcd and PoolCounter processes. They are
stopped by pid, and only after checking that the pid still belongs to the program that was
started (its command line still names the same configuration), so a reused pid is never
signalled by mistake.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from opcache_guard.errors import LabError


def cmdline(pid: int) -> list[str]:
    """Return a live process's command line, or an empty list if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_alive(pid: int) -> bool:
    """Return whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def owns(pid: int, marker: str) -> bool:
    """Return whether a live process's command line contains marker."""
    return any(marker in part for part in cmdline(pid))


def read_pid(path: Path) -> int | None:
    """Read a pid file, returning None when it is missing or empty."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def spawn(argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a long-running program in its own session, output appended to log_path."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=full_env, cwd=cwd, start_new_session=True, close_fds=True,
        )


def launch(argv: Sequence[str], log_path: Path, ready: Callable[[], bool], *, name: str,
           marker: str, timeout: float, env: Mapping[str, str] | None = None,
           cwd: Path | None = None, interval: float = 0.02) -> int:
    """Start a server and wait until ready() returns true; return its pid.

    Arguments:
        argv: the server's command line.
        log_path: where its output goes; the errors point there.
        ready: called until it returns true.
        name: how errors name the server, for example "etcd on http://127.0.0.1:2379".
        marker: a string of the command line, so a timed-out server is stopped safely.
        timeout: seconds to wait.

    Raises:
        LabError: the server exited, or was not ready within timeout (it is stopped then).
    """
    process = spawn(argv, log_path, env=env, cwd=cwd)
    if not wait_until(lambda: process.poll() is not None or ready(), timeout, interval):
        stop(process.pid, marker)
        raise LabError(f"{name} was not ready within {timeout:g} s; see {log_path}")
    if process.poll() is not None:
        raise LabError(f"{name} exited with status {process.returncode}; see {log_path}")
    return process.pid


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Call predicate until it returns true or timeout seconds pass; return the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop(pid: int, marker: str, graceful: signal.Signals = signal.SIGTERM,
         timeout: float = 10.0) -> bool:
    """Stop a process we started: graceful signal, then SIGKILL after timeout seconds.

    Returns False without signalling anything when the pid no longer runs a command line
    containing marker.
    """
    if not is_alive(pid) or not owns(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, graceful)
    if wait_until(lambda: not is_alive(pid), timeout):
        _reap(pid)
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not is_alive(pid), 5.0)
    _reap(pid)
    return True


def group_members(pgid: int, marker: str) -> list[int]:
    """Return the live processes of a process group whose command line contains marker."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 2 and int(fields[2]) == pgid and owns(int(entry.name), marker):
            members.append(int(entry.name))
    return members


def stop_group(pgid: int, marker: str, timeout: float = 5.0) -> list[int]:
    """Stop what is left of a process group we started, such as workers of a dead master.

    Only members whose command line contains marker are signalled. Returns their pids.
    """
    members = group_members(pgid, marker)
    for pid in members:
        stop(pid, marker, timeout=timeout)
    return members


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that nothing listens on right now, on a loopback host."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Return whether a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_program(names: Sequence[str], package: str) -> str:
    """Find a program on PATH or in the sbin folders, or raise naming the package to install."""
    search = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/sbin", "/usr/local/sbin"]
    for name in names:
        for folder in search:
            candidate = Path(folder) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise LabError(f"{names[0]} is not installed; install it with "
                     f"'apt-get install -y {package}'")
