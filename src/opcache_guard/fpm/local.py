"""A php-fpm master run from configuration files that opcache-guard writes itself.

The lab, the tests and the stress harness all need real masters with small, known OPcache
settings. ``MasterSpec`` describes one master with one pool; ``write_files`` renders its
php-fpm and php.ini files, and ``start`` runs it in the foreground mode (``-F``) in its own
session, waiting until it answers its ping.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from pathlib import Path

from opcache_guard import procs
from opcache_guard.errors import ConfigError, FastCGIError, LabError
from opcache_guard.fastcgi import Address, FastCGIClient

STATUS_PATH = "/fpm-status"
PING_PATH = "/fpm-ping"
PING_RESPONSE = "pong"
FPM_PROGRAMS = ("php-fpm8.2", "php-fpm")
FPM_ENV = "OPCACHE_GUARD_PHP_FPM"
READY_LINE = "ready to handle connections"


@dataclasses.dataclass
class OpcacheSettings:
    """OPcache ini settings of a master. PHP ignores values below its minimums silently."""

    memory_consumption: int = 8
    interned_strings_buffer: int = 1
    max_accelerated_files: int = 2000
    max_wasted_percentage: int = 5
    validate_timestamps: bool = True
    revalidate_freq: int = 0
    protect_memory: bool = False
    file_cache: str = ""
    file_update_protection: int = 2
    enable: bool = True
    load_extension: bool = True

    def validate(self) -> None:
        """Raise ConfigError for values PHP would silently replace by its defaults."""
        if self.memory_consumption < 8:
            raise ConfigError(f"opcache memory_consumption {self.memory_consumption} MB is below "
                              "PHP's minimum of 8 MB, which PHP would replace by 128 MB; use 8 "
                              "or more")
        if self.max_accelerated_files < 200:
            raise ConfigError(f"opcache max_accelerated_files {self.max_accelerated_files} is "
                              "below PHP's minimum of 200; use 200 or more")
        if not 1 <= self.max_wasted_percentage <= 50:
            raise ConfigError(f"opcache max_wasted_percentage {self.max_wasted_percentage} is "
                              "outside 1-50")
        if self.interned_strings_buffer < 1:
            raise ConfigError("opcache interned_strings_buffer must be at least 1 MB")
        if self.interned_strings_buffer * 2 >= self.memory_consumption:
            raise ConfigError(
                f"opcache interned_strings_buffer {self.interned_strings_buffer} MB does not fit "
                f"in memory_consumption {self.memory_consumption} MB; use at most a quarter")

    def ini_lines(self) -> list[str]:
        if not self.load_extension:
            return []
        lines = [
            "zend_extension=opcache.so",
            f"opcache.enable={int(self.enable)}",
            f"opcache.memory_consumption={self.memory_consumption}",
            f"opcache.interned_strings_buffer={self.interned_strings_buffer}",
            f"opcache.max_accelerated_files={self.max_accelerated_files}",
            f"opcache.max_wasted_percentage={self.max_wasted_percentage}",
            f"opcache.validate_timestamps={int(self.validate_timestamps)}",
            f"opcache.revalidate_freq={self.revalidate_freq}",
            f"opcache.protect_memory={int(self.protect_memory)}",
            f"opcache.file_update_protection={self.file_update_protection}",
        ]
        if self.file_cache:
            lines.append(f"opcache.file_cache={self.file_cache}")
        return lines


@dataclasses.dataclass
class MasterSpec:
    """One php-fpm master with one pool, all of its files under ``directory``."""

    name: str
    directory: Path
    listen: str
    status_listen: str = ""
    max_children: int = 4
    process_control_timeout: int = 10
    request_terminate_timeout: int = 30
    opcache: OpcacheSettings = dataclasses.field(default_factory=OpcacheSettings)

    @property
    def docroot(self) -> Path:
        return self.directory / "docroot"

    @property
    def fpm_conf(self) -> Path:
        return self.directory / "php-fpm.conf"

    @property
    def php_ini(self) -> Path:
        return self.directory / "php.ini"

    @property
    def pid_file(self) -> Path:
        return self.directory / "php-fpm.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "php-fpm.log"

    def listen_address(self) -> Address:
        from opcache_guard.fastcgi import parse_address
        return parse_address(self.listen)

    def command(self) -> list[str]:
        """Return the argument list that runs this master in the foreground."""
        override = os.environ.get(FPM_ENV)
        if override:
            if not (os.path.isfile(override) and os.access(override, os.X_OK)):
                raise LabError(f"{FPM_ENV}={override} is not an executable php-fpm; unset it or "
                               "install php-fpm with 'apt-get install -y php8.2-fpm'")
            program = override
        else:
            program = procs.require_program(FPM_PROGRAMS, "php8.2-fpm")
        argv = [program, "-F", "-y", str(self.fpm_conf), "-c", str(self.php_ini)]
        if os.geteuid() == 0:
            argv.append("-R")
        return argv


def _pool_user_lines() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["user = nobody", "group = nogroup"]


def render_fpm_conf(spec: MasterSpec) -> str:
    """Render the php-fpm configuration of a master with a single pool."""
    lines = [
        "[global]",
        f"pid = {spec.pid_file}",
        f"error_log = {spec.log_file}",
        "log_level = notice",
        "daemonize = no",
        f"process_control_timeout = {spec.process_control_timeout}s",
        "",
        f"[{spec.name}]",
        *_pool_user_lines(),
        f"listen = {spec.listen}",
        "listen.backlog = 511",
        "pm = static",
        f"pm.max_children = {spec.max_children}",
        f"pm.status_path = {STATUS_PATH}",
        f"ping.path = {PING_PATH}",
        f"ping.response = {PING_RESPONSE}",
        f"request_terminate_timeout = {spec.request_terminate_timeout}s",
        "catch_workers_output = yes",
        "decorate_workers_output = no",
        "clear_env = no",
        f"env[OPCACHE_GUARD_POOL] = {spec.name}",
        "php_admin_flag[log_errors] = on",
        "php_admin_flag[display_errors] = off",
    ]
    if spec.status_listen:
        lines.insert(lines.index(f"pm.status_path = {STATUS_PATH}") + 1,
                     f"pm.status_listen = {spec.status_listen}")
    return "\n".join(lines) + "\n"


def render_php_ini(spec: MasterSpec) -> str:
    """Render the php.ini of a master; the system's conf.d is skipped, so OPcache is loaded here."""
    lines = [
        "memory_limit = 128M",
        "max_execution_time = 30",
        "log_errors = On",
        "display_errors = Off",
        *spec.opcache.ini_lines(),
    ]
    return "\n".join(lines) + "\n"


def write_files(spec: MasterSpec) -> None:
    """Create the master's directory, docroot and configuration files."""
    spec.opcache.validate()
    spec.directory.mkdir(parents=True, exist_ok=True)
    spec.directory.chmod(0o755)
    spec.docroot.mkdir(exist_ok=True)
    spec.docroot.chmod(0o755)
    spec.fpm_conf.write_text(render_fpm_conf(spec))
    spec.php_ini.write_text(render_php_ini(spec))


def ping(address: Address | str, timeout: float = 1.0) -> bool:
    """Return whether the pool at address answers its ping path with the expected text."""
    try:
        with FastCGIClient(address, connect_timeout=timeout, read_timeout=timeout) as client:
            reply = client.get(PING_PATH, PING_PATH)
    except FastCGIError:
        return False
    return reply.status == 200 and reply.body.strip() == PING_RESPONSE.encode()


def start(spec: MasterSpec, timeout: float = 10.0) -> int:
    """Start the master and wait until it answers its ping; return its pid.

    Raises:
        LabError: the master exited or did not answer in time; the message quotes its log.
    """
    argv = spec.command()
    check = subprocess.run(argv + ["-t"], capture_output=True, text=True, env=_fpm_env(),
                           check=False)
    if check.returncode != 0:
        raise LabError(f"php-fpm rejected the configuration {spec.fpm_conf}: "
                       f"{(check.stderr or check.stdout).strip()}")
    log_offset = spec.log_file.stat().st_size if spec.log_file.exists() else 0
    address = spec.listen_address()

    def ready() -> bool:
        # The ping alone could be answered by another process that took the port first, so
        # the master's own log must say it is ready too.
        return _logged_since(spec.log_file, log_offset, READY_LINE) and ping(address, 0.5)

    try:
        return procs.launch(argv, spec.directory / "php-fpm.stdout", ready,
                            name=f"php-fpm master {spec.name} on {address}",
                            marker=str(spec.fpm_conf), timeout=timeout, env=_fpm_env())
    except LabError as exc:
        raise LabError(f"{exc}; last lines of {spec.log_file}: {_tail(spec.log_file)}") from exc


def stop(spec: MasterSpec, pid: int | None = None, timeout: float = 15.0) -> bool:
    """Stop the master gracefully (QUIT) by pid; return False if it was not running."""
    pid = pid or procs.read_pid(spec.pid_file)
    if pid is None:
        return False
    return procs.stop(pid, str(spec.fpm_conf), signal.SIGQUIT, timeout)


def _logged_since(path: Path, offset: int, text: str) -> bool:
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            return text.encode() in log.read()
    except OSError:
        return False


def _fpm_env() -> dict[str, str]:
    return {"PHP_INI_SCAN_DIR": ""}


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
