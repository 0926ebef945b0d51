"""The pool under stress: a dedicated lab master, or an existing pool the operator names.

In lab mode the harness starts its own php-fpm master with the OPcache settings of the run,
in a fresh directory under the system's temporary directory (mode 0755, so workers running
as nobody can read the code), with a status listener on a second loopback port so that
probes are answered while every worker of the main pool is busy. It is stopped by pid.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import tempfile
from pathlib import Path

from opcache_guard import procs
from opcache_guard.config import PoolConfig, pool_from_address
from opcache_guard.errors import StressError
from opcache_guard.fpm import local


@dataclasses.dataclass
class Target:
    """A pool the harness sends load to.

    Arguments:
        pool: how to reach and probe the pool.
        docroot: the directory under which the harness writes its stress root.
        master_pid: the master's pid, when reloads may be sent; None otherwise.
        master_marker: text the master's command line must contain before it is signalled.
        log_file: the FPM log to watch for crashes, if known.
        spec: the lab master's spec, when the harness started it.
        lab_dir: the directory the harness created for the lab, removed at the end.
    """

    pool: PoolConfig
    docroot: Path
    master_pid: int | None = None
    master_marker: str = "php-fpm"
    log_file: Path | None = None
    spec: local.MasterSpec | None = None
    lab_dir: Path | None = None

    def reload(self) -> None:
        """Send USR2 to the master, which re-executes it with a fresh OPcache.

        Raises:
            StressError: no pid is known, or the pid no longer runs php-fpm.
        """
        pid = self.master_pid
        if pid is None:
            raise StressError("cannot reload the pool: its master pid is unknown; pass "
                              "--pid-file with the master's pid file")
        if not procs.owns(pid, self.master_marker):
            raise StressError(f"process {pid} is no longer the php-fpm master "
                              f"({self.master_marker}); not sending USR2")
        os.kill(pid, signal.SIGUSR2)


def lab_spec(settings: local.OpcacheSettings, workers: int, directory: Path) -> local.MasterSpec:
    """Describe the lab master of a run, listening on free loopback ports."""
    return local.MasterSpec(
        name="stress", directory=directory / "fpm",
        listen=f"127.0.0.1:{procs.free_port()}",
        status_listen=f"127.0.0.1:{procs.free_port()}",
        max_children=workers, opcache=settings)


def start_lab(settings: local.OpcacheSettings, workers: int) -> Target:
    """Start a dedicated php-fpm master for the run.

    Raises:
        StressError: the master failed to start; the message quotes its log.
    """
    directory = Path(tempfile.mkdtemp(prefix="opcache-guard-stress-"))
    os.chmod(directory, 0o755)
    spec = lab_spec(settings, workers, directory)
    try:
        local.write_files(spec)
        pid = local.start(spec)
    except Exception as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise StressError(f"cannot start the lab php-fpm master: {exc}") from exc
    pool = pool_from_address(spec.listen, "stress")
    pool.status_listen = pool_from_address(spec.status_listen).address
    return Target(pool=pool, docroot=spec.docroot, master_pid=pid,
                  master_marker=str(spec.fpm_conf), log_file=spec.log_file, spec=spec,
                  lab_dir=directory)


def stop_lab(target: Target, keep_files: bool = False) -> None:
    """Stop the lab master by pid and remove its directory unless keep_files is set."""
    if target.spec is None:
        return
    local.stop(target.spec, target.master_pid)
    if target.lab_dir is not None and not keep_files:
        shutil.rmtree(target.lab_dir, ignore_errors=True)


def existing_target(address: str, docroot: Path, pid_file: Path | None,
                    log_file: Path | None) -> Target:
    """Describe a pool the operator runs; reloads need its pid file.

    Raises:
        ConfigError: the address is invalid.
        StressError: the docroot is missing, or the pid file cannot be read.
    """
    pool = pool_from_address(address)
    if not docroot.is_dir():
        raise StressError(f"docroot {docroot} is not a directory; pass the pool's document "
                          "root with --docroot")
    pid = None
    if pid_file is not None:
        pid = procs.read_pid(pid_file)
        if pid is None or not procs.is_alive(pid):
            raise StressError(f"pid file {pid_file} names no running process; pass the pid "
                              "file of the pool's php-fpm master")
    return Target(pool=pool, docroot=docroot, master_pid=pid, log_file=log_file)
