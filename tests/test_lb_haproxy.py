"""The HAProxy backend against a real HAProxy in front of two real php-fpm masters."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from opcache_guard import procs
from opcache_guard.errors import ConfigError, LoadBalancerError
from opcache_guard.lb import base
from opcache_guard.lb.base import LbState
from opcache_guard.lb.haproxy import HaproxyLoadBalancer, state_of
from opcache_guard.lb.haproxy_api import RuntimeAPI, SocketAddress, parse_socket
from opcache_guard.servers.haproxy import FcgiServer, HaproxyServer, render_config

WHO_PHP = "<?php echo fpm_get_status()['pool'];"
SLOW_PHP = "<?php usleep((int) ($_GET['ms'] ?? 1500) * 1000); echo fpm_get_status()['pool'];"

# Requests go straight to 127.0.0.1, whatever proxy the environment names.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclasses.dataclass
class Lab:
    """Two php-fpm masters, app1 and app2, behind one HAProxy backend named php."""

    haproxy: HaproxyServer

    def balancer(self, server: str, **overrides: object) -> HaproxyLoadBalancer:
        section: dict[str, object] = {"backend": "haproxy",
                                      "socket": f"unix:{self.haproxy.admin_socket}",
                                      "haproxy_backend": "php", "timeout": 2.0}
        section.update(overrides)
        dry_run = bool(section.pop("dry_run", False))
        balancer = base.create(server, section, dry_run)
        assert isinstance(balancer, HaproxyLoadBalancer)
        return balancer

    def get(self, path: str, timeout: float = 5.0) -> str:
        with _opener.open(self.haproxy.url + path, timeout=timeout) as reply:
            return str(reply.read().decode())

    def serving_pools(self, count: int = 6) -> list[str]:
        return [self.get("/who.php") for _ in range(count)]


def _start_lab(fpm_master: Callable[..., object], fpm_dir: Path,
               socket_level: str = "admin") -> HaproxyServer:
    specs = [fpm_master(name=name, max_children=2) for name in ("app1", "app2")]
    docroot = specs[0].docroot  # type: ignore[attr-defined]
    (docroot / "who.php").write_text(WHO_PHP)
    (docroot / "slow.php").write_text(SLOW_PHP)
    servers = [FcgiServer(spec.name, spec.listen, spec.max_children)  # type: ignore[attr-defined]
               for spec in specs]
    return HaproxyServer(fpm_dir / "haproxy", servers, docroot, check_interval=0.2,
                         socket_level=socket_level).start()


@pytest.fixture
def lab(fpm_master: Callable[..., object], fpm_dir: Path) -> Iterator[Lab]:
    haproxy = _start_lab(fpm_master, fpm_dir)
    yield Lab(haproxy)
    haproxy.stop()


def _wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    return procs.wait_until(predicate, timeout, interval=0.05)


def test_launcher_serves_both_pools(lab: Lab) -> None:
    assert set(lab.serving_pools()) == {"app1", "app2"}
    assert lab.haproxy.api().execute("show info").startswith("Name: HAProxy")
    assert _wait_for(lambda: " 200 " in lab.haproxy.log_file.read_text())
    assert "php/app1" in lab.haproxy.log_file.read_text()


def test_state_of_fresh_server_is_pooled(lab: Lab) -> None:
    assert lab.balancer("app1").state() is LbState.POOLED
    assert lab.balancer("app1").in_flight() == 0


def test_depool_drains_and_stops_new_requests(lab: Lab) -> None:
    app1 = lab.balancer("app1")
    app1.depool()

    assert app1.state() is LbState.DRAINING
    assert set(lab.serving_pools()) == {"app2"}
    rows = lab.haproxy.api().show_servers_state("php")
    assert [row["srv_admin_state"] for row in rows if row["srv_name"] == "app1"] == ["8"]


def test_depool_twice_is_harmless(lab: Lab) -> None:
    app1 = lab.balancer("app1")
    app1.depool()
    app1.depool()
    assert app1.state() is LbState.DRAINING


def test_in_flight_counts_running_request(lab: Lab) -> None:
    lab.balancer("app2").disable()
    bodies: list[str] = []
    slow = threading.Thread(target=lambda: bodies.append(lab.get("/slow.php?ms=1500")))
    slow.start()
    app1 = lab.balancer("app1")
    try:
        assert _wait_for(lambda: app1.in_flight() == 1, timeout=1.0)
        lab.balancer("app2").pool()
        app1.depool()
        assert app1.in_flight() == 1
        assert set(lab.serving_pools(4)) == {"app2"}
    finally:
        slow.join(timeout=5)
    assert bodies == ["app1"]
    assert _wait_for(lambda: app1.in_flight() == 0, timeout=2.0)


def test_disable_puts_server_in_maintenance(lab: Lab) -> None:
    app1 = lab.balancer("app1")
    app1.depool()
    app1.disable()
    app1.disable()

    assert app1.state() is LbState.DEPOOLED
    rows = lab.haproxy.api().show_servers_state("php")
    assert [row["srv_admin_state"] for row in rows if row["srv_name"] == "app1"] == ["1"]
    assert set(lab.serving_pools()) == {"app2"}


def test_depool_keeps_maintenance(lab: Lab) -> None:
    app1 = lab.balancer("app1")
    app1.disable()
    app1.depool()
    assert app1.state() is LbState.DEPOOLED


def test_pool_returns_traffic(lab: Lab) -> None:
    app1 = lab.balancer("app1")
    app1.depool()
    app1.disable()
    app1.pool()
    app1.pool()

    assert app1.state() is LbState.POOLED
    assert _wait_for(lambda: "app1" in lab.serving_pools(4))


def test_pool_fails_when_weight_is_zero(lab: Lab) -> None:
    lab.haproxy.api().change("set server php/app1 weight 0")
    with pytest.raises(LoadBalancerError, match="still draining after"):
        lab.balancer("app1").pool()


def test_unknown_backend_is_clear(lab: Lab) -> None:
    balancer = lab.balancer("app1", haproxy_backend="nope")
    with pytest.raises(LoadBalancerError, match="no backend .*haproxy_backend"):
        balancer.state()
    with pytest.raises(LoadBalancerError, match="no backend"):
        balancer.in_flight()
    with pytest.raises(LoadBalancerError, match="no backend"):
        balancer.depool()


def test_unknown_server_is_clear(lab: Lab) -> None:
    balancer = lab.balancer("app9")
    with pytest.raises(LoadBalancerError, match="no server app9 .*servers: app1, app2"):
        balancer.state()
    with pytest.raises(LoadBalancerError, match="no server app9"):
        balancer.in_flight()


def test_unknown_server_set_command_is_clear(lab: Lab) -> None:
    api = lab.haproxy.api()
    with pytest.raises(LoadBalancerError, match="no server named"):
        api.change("set server php/app9 state drain")
    with pytest.raises(LoadBalancerError, match="no backend named"):
        api.change("set server nope/app1 state drain")


def test_user_level_socket_is_permission_denied(fpm_master: Callable[..., object],
                                                fpm_dir: Path) -> None:
    haproxy = _start_lab(fpm_master, fpm_dir, socket_level="user")
    try:
        balancer = Lab(haproxy).balancer("app1")
        with pytest.raises(LoadBalancerError, match="permission denied.*level admin"):
            balancer.depool()
        with pytest.raises(LoadBalancerError, match="permission denied"):
            haproxy.api().change("set server php/app1 state drain")
        assert set(Lab(haproxy).serving_pools()) == {"app1", "app2"}
    finally:
        haproxy.stop()


def test_dry_run_changes_nothing(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    app1 = lab.balancer("app1", dry_run=True)
    with caplog.at_level(logging.INFO, logger="opcache_guard.lb.haproxy"):
        app1.depool()
        app1.disable()

    assert app1.state() is LbState.POOLED
    assert "would send 'set server php/app1 state drain'" in caplog.text
    assert "would send 'set server php/app1 state maint'" in caplog.text
    assert set(lab.serving_pools()) == {"app1", "app2"}


def test_missing_socket_is_clear(fpm_dir: Path) -> None:
    api = RuntimeAPI(SocketAddress(path=str(fpm_dir / "absent.sock")), timeout=1.0)
    with pytest.raises(LoadBalancerError, match="does not exist"):
        api.execute("show info")


def test_refusing_socket_is_clear() -> None:
    api = RuntimeAPI(parse_socket(f"127.0.0.1:{procs.free_port()}"), timeout=1.0)
    with pytest.raises(LoadBalancerError, match="refused"):
        api.execute("show info")


def test_silent_socket_times_out(fpm_dir: Path) -> None:
    import socket

    path = fpm_dir / "silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        api = RuntimeAPI(SocketAddress(path=str(path)), timeout=0.3)
        started = time.monotonic()
        with pytest.raises(LoadBalancerError, match="timed out after 0.3 s"):
            api.execute("show info")
        assert time.monotonic() - started < 2


@pytest.mark.parametrize(("text", "expected"), [
    ("unix:/run/haproxy/admin.sock", SocketAddress(path="/run/haproxy/admin.sock")),
    ("/run/haproxy/admin.sock", SocketAddress(path="/run/haproxy/admin.sock")),
    ("127.0.0.1:9999", SocketAddress(host="127.0.0.1", port=9999)),
    ("[::1]:9999", SocketAddress(host="::1", port=9999)),
    ("localhost:9999", SocketAddress(host="localhost", port=9999)),
])
def test_parse_socket_accepts(text: str, expected: SocketAddress) -> None:
    assert parse_socket(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("192.0.2.10:9999", "not on loopback"),
    ("haproxy.example.org:9999", "not on loopback"),
    ("127.0.0.1", "neither a unix socket path nor host:port"),
    ("127.0.0.1:0", "neither"),
    ("unix:", "has no path"),
])
def test_parse_socket_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_socket(text)


@pytest.mark.parametrize(("admin_state", "weight", "expected"), [
    (0x00, 1, LbState.POOLED),
    (0x04, 1, LbState.POOLED),      # disabled in haproxy.cfg, then set ready
    (0x08, 1, LbState.DRAINING),
    (0x10, 1, LbState.DRAINING),
    (0x00, 0, LbState.DRAINING),
    (0x01, 1, LbState.DEPOOLED),
    (0x05, 1, LbState.DEPOOLED),    # disabled in haproxy.cfg
    (0x0C, 1, LbState.DRAINING),
    (0x20, 1, LbState.DEPOOLED),
    (0x40, 1, LbState.POOLED),      # FQDN changed over the runtime API: no admin effect
])
def test_state_of_admin_flags(admin_state: int, weight: int, expected: LbState) -> None:
    assert state_of(admin_state, weight) is expected


def test_config_rejects_unknown_key() -> None:
    with pytest.raises(ConfigError, match="sockett: unknown key for backend haproxy"):
        base.create("app1", {"backend": "haproxy", "sockett": "/x", "haproxy_backend": "php"})


def test_config_requires_backend_name() -> None:
    with pytest.raises(ConfigError, match="haproxy_backend is missing"):
        base.create("app1", {"backend": "haproxy", "socket": "/x"})


def test_config_defaults_server_to_host() -> None:
    balancer = base.create("app7", {"backend": "haproxy", "socket": "/x",
                                    "haproxy_backend": "php"})
    assert balancer.describe() == "haproxy php/app7"


def test_render_config_has_fastcgi_settings(tmp_path: Path) -> None:
    haproxy = HaproxyServer(tmp_path, [FcgiServer("app1", "127.0.0.1:9001", 3),
                                       FcgiServer("app2", "unix:/run/php/app2.sock", 5)],
                            tmp_path / "docroot", port=8080, check_interval=0.5)
    text = render_config(haproxy)
    for line in ["bind 127.0.0.1:8080", "use-fcgi-app php-fpm", "no option keep-conn",
                 "option httpchk", "http-check send meth GET uri /fpm-ping",
                 "http-check expect string pong", "option httplog",
                 f"stats socket {tmp_path}/admin.sock mode 600 level admin",
                 "server app1 127.0.0.1:9001 proto fcgi maxconn 3 check inter 500ms fall 2 rise 1",
                 "server app2 /run/php/app2.sock proto fcgi maxconn 5 check inter 500ms"]:
        assert line in text


@pytest.mark.parametrize(("servers", "message"), [
    ([], "has no servers"),
    ([FcgiServer("a", "127.0.0.1:1", 1), FcgiServer("a", "127.0.0.1:2", 1)], "repeats server"),
    ([FcgiServer("a", "127.0.0.1:1", 0)], "maxconn 0 must be at least 1"),
])
def test_render_config_rejects(tmp_path: Path, servers: list[FcgiServer], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        render_config(HaproxyServer(tmp_path, servers, tmp_path))
