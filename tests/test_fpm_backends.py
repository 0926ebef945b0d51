import stat

import pytest
from restart_support import master_pid

from opcache_guard.errors import ConfigError, FpmControlError
from opcache_guard.fpm import base, local
from opcache_guard.fpm.master import MasterControl


def _master(spec, **overrides):
    return MasterControl("app1", spec.pid_file, spec.command(), env={"PHP_INI_SCAN_DIR": ""},
                         log_file=spec.directory / "fpm.out", **overrides)


def test_master_restart_replaces_pid(fpm_master):
    spec = fpm_master()
    old_pid = master_pid(spec)
    control = _master(spec)
    assert control.identity() == f"pid {old_pid}"

    control.restart()

    assert master_pid(spec) not in (None, old_pid)
    assert control.is_running()


def test_master_dry_run_sends_nothing(fpm_master):
    spec = fpm_master()
    old_pid = master_pid(spec)

    _master(spec, dry_run=True).restart()

    assert master_pid(spec) == old_pid


def test_master_start_when_down(fpm_master):
    spec = fpm_master()
    control = _master(spec)
    local.stop(spec)
    assert not control.is_running()

    control.start()

    assert control.is_running()


def test_master_check_command_failure_keeps_master(fpm_master):
    spec = fpm_master()
    old_pid = master_pid(spec)
    control = _master(spec, check_command=["false"])

    with pytest.raises(FpmControlError, match="configuration check"):
        control.restart()

    assert master_pid(spec) == old_pid


def test_master_start_failure_quotes_log(fpm_master):
    spec = fpm_master()
    spec.fpm_conf.write_text("[global]\nbroken\n")

    with pytest.raises(FpmControlError, match="exited at once"):
        _master(spec).restart()


def _script(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_systemd_backend_runs_systemctl(tmp_path):
    log = tmp_path / "calls"
    fake = _script(tmp_path / "systemctl",
                   f'echo "$@" >> {log}\n[ "$1" = show ] && echo 4242\nexit 0\n')
    control = base.create("app1", {"backend": "systemd", "unit": "php8.2-fpm.service",
                                   "systemctl": fake})

    assert control.identity() == "pid 4242"
    assert control.is_running()
    control.restart()

    assert "restart php8.2-fpm.service" in log.read_text()


def test_command_backend_reports_failure(tmp_path):
    control = base.create("app1", {"backend": "command",
                                   "restart_command": [_script(tmp_path / "r", "echo no; exit 3\n")]})

    with pytest.raises(FpmControlError, match="exited with status 3: no"):
        control.restart()


def test_command_backend_timeout(tmp_path):
    control = base.create("app1", {"backend": "command", "timeout": 0.2,
                                   "restart_command": [_script(tmp_path / "r", "sleep 5\n")]})

    with pytest.raises(FpmControlError, match="did not finish within 0.2 s"):
        control.restart()


@pytest.mark.parametrize("section, message", [
    ({"backend": "nope"}, "use one of: command, master, systemd"),
    ({"backend": "systemd"}, "unit is missing"),
    ({"backend": "systemd", "unit": "x", "colour": 1}, "unknown key 'colour'"),
    ({"backend": "master", "pid_file": "/x"}, "command must be a non-empty list"),
    ({"backend": "master", "pid_file": "/x", "command": ["a"], "stop_timeout": 0},
     "stop_timeout = 0 must be a positive"),
])
def test_fpm_config_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        base.create("app1", section)
