"""A restart that fails keeps the host out of HAProxy until the operator pools it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from e2e_support import Lab, cli, running_lab

from opcache_guard.lb.base import LbState

HOST = "app1"


@pytest.fixture
def lab() -> Iterator[Lab]:
    with running_lab(pools=2) as running:
        yield running


def restart_fails(lab: Lab, config: str, cause: str) -> int:
    """Run a restart that must fail for cause; check the host stays out; return the run id."""
    result = cli("restart", "-c", config)
    assert result.returncode == 2, result.stdout + result.stderr
    found = re.search(r"^run (\d+): FAILED: ", result.stdout, re.MULTILINE)
    assert found, result.stdout
    assert cause in result.stdout

    assert lab.lb_states()[HOST] == LbState.DEPOOLED
    assert lab.stat_status(HOST) == "MAINT"
    assert lab.lb_states()["app2"] == LbState.POOLED
    check = cli("check", "-c", config)
    assert check.returncode == 2, check.stdout
    assert f"run {found.group(1)} of {HOST}" in check.stdout
    assert "FAILED" in check.stdout
    return int(found.group(1))


def pool_after_fix(lab: Lab, config: str) -> None:
    """Pool the fixed host through the CLI and check it is back and healthy."""
    pooled = cli("pool", "-c", config)
    assert pooled.returncode == 0, pooled.stdout + pooled.stderr
    assert "closed 1 FAILED runs" in pooled.stdout
    assert lab.lb_states()[HOST] == LbState.POOLED
    assert lab.wait_up(HOST) == "UP"
    check = cli("check", "-c", config)
    assert check.returncode == 0, check.stdout


def test_invalid_fpm_config_aborts_restart(lab: Lab) -> None:
    config = str(lab.host_config(HOST))
    fpm_conf = lab.master(HOST).spec().fpm_conf
    valid = fpm_conf.read_text()
    fpm_conf.write_text(valid + "\n[broken\nlisten = \n")
    pid_before = lab.pid(HOST)

    result = cli("restart", "-c", config)

    # The configuration check runs before the old master is stopped, so the host goes back
    # into service as it was, and its slot is free again.
    fpm_conf.write_text(valid)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^run \d+: ABORTED: ", result.stdout, re.MULTILINE), result.stdout
    assert "configuration check" in result.stdout
    assert lab.pid(HOST) == pid_before
    assert lab.lb_states()[HOST] == LbState.POOLED
    assert lab.wait_up(HOST) == "UP"
    assert cli("check", "-c", config).returncode == 0
    other = cli("restart", "-c", str(lab.host_config("app2")), "--slot-timeout", "0")
    assert other.returncode == 0, other.stdout + other.stderr


def test_failed_health_script_fails_verification(lab: Lab) -> None:
    docroot = lab.master(HOST).spec().docroot
    health = docroot / "health.php"
    health.write_text("<?php http_response_code(500); echo 'broken';\n")
    health.chmod(0o644)
    text = lab.host_config(HOST).read_text()
    assert "\nverify_timeout = 15.0\n" in text
    copy = lab.host_config(HOST).with_name(f"{HOST}-health.toml")
    copy.write_text(text.replace("\nverify_timeout = 15.0\n",
                                 f'\nverify_timeout = 2.0\nhealth_script = "{health}"\n'))
    start_before = lab.opcache_start(HOST)

    restart_fails(lab, str(copy), "returned 500, expected 200")

    # The new master started and responds, but verification kept it out.
    assert lab.opcache_start(HOST) > start_before

    # The FAILED host keeps its slot, so the group (limit 1) lets no other host out.
    blocked = cli("restart", "-c", str(lab.host_config("app2")), "--slot-timeout", "0")
    assert blocked.returncode == 1, blocked.stdout + blocked.stderr
    assert "waiting for a slot" in blocked.stdout + blocked.stderr
    assert lab.lb_states()["app2"] == LbState.POOLED

    health.write_text("<?php echo 'ok';\n")
    pool_after_fix(lab, str(copy))
    freed = cli("restart", "-c", str(lab.host_config("app2")), "--slot-timeout", "0")
    assert freed.returncode == 0, freed.stdout + freed.stderr
