"""The conftool backend against a real single-node etcd."""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import etcd3gw
import pytest

from opcache_guard import procs
from opcache_guard.errors import ConfigError, LoadBalancerError
from opcache_guard.lb import base, conftool
from opcache_guard.lb.base import LbState
from opcache_guard.lb.conftool import ConftoolLoadBalancer, KeyValue
from opcache_guard.servers.etcd import EtcdServer

_hosts = itertools.count(1)


def _section(server: EtcdServer, **overrides: Any) -> dict[str, Any]:
    section = {"backend": "conftool", "endpoints": server.url, "datacenter": "dc1",
               "cluster": "appservers", "service": "php", "timeout": 2.0}
    section.update(overrides)
    return section


def _balancer(server: EtcdServer, pooled: str | None = "yes", dry_run: bool = False,
              **overrides: Any) -> ConftoolLoadBalancer:
    host = f"app{next(_hosts)}.example.org"
    balancer = base.create(host, _section(server, **overrides), dry_run)
    assert isinstance(balancer, ConftoolLoadBalancer)
    if pooled is not None:
        _client(server).put(balancer.key, json.dumps({"pooled": pooled, "weight": 10}))
    return balancer


def _client(server: EtcdServer) -> etcd3gw.Etcd3Client:
    return etcd3gw.Etcd3Client(host="127.0.0.1", port=server.client_port, timeout=2)


def _stored(server: EtcdServer, key: str) -> dict[str, Any]:
    found = _client(server).get(key)
    assert len(found) == 1
    value = json.loads(found[0])
    assert isinstance(value, dict)
    return value


def test_key_follows_conftool_layout(etcd_server: EtcdServer) -> None:
    balancer = _balancer(etcd_server, pooled=None)
    assert balancer.key == f"/conftool/v1/pools/dc1/appservers/php/{balancer.host}"
    other = base.create("app1", _section(etcd_server, prefix="/custom/"))
    assert isinstance(other, ConftoolLoadBalancer)
    assert other.key == "/custom/pools/dc1/appservers/php/app1"


def test_depool_and_pool_write_the_key(etcd_server: EtcdServer) -> None:
    balancer = _balancer(etcd_server)
    assert balancer.state() is LbState.POOLED
    assert balancer.in_flight() is None

    balancer.depool()
    assert balancer.state() is LbState.DEPOOLED
    assert _stored(etcd_server, balancer.key) == {"pooled": "no", "weight": 10}

    balancer.disable()
    balancer.depool()
    assert balancer.state() is LbState.DEPOOLED

    balancer.pool()
    balancer.pool()
    assert _stored(etcd_server, balancer.key) == {"pooled": "yes", "weight": 10}


def test_change_keeps_other_fields(etcd_server: EtcdServer) -> None:
    balancer = _balancer(etcd_server, pooled=None)
    _client(etcd_server).put(balancer.key, json.dumps({"pooled": "yes", "weight": 3,
                                                       "note": "canary"}))
    balancer.depool()
    assert _stored(etcd_server, balancer.key) == {"pooled": "no", "weight": 3, "note": "canary"}


def test_inactive_is_never_changed(etcd_server: EtcdServer) -> None:
    balancer = _balancer(etcd_server, pooled="inactive")
    assert balancer.state() is LbState.INACTIVE
    before = _client(etcd_server).get(balancer.key, metadata=True)[0][1]["mod_revision"]

    with pytest.raises(LoadBalancerError, match="pooled=inactive.*operator must pool it"):
        balancer.depool()
    with pytest.raises(LoadBalancerError, match="pooled=inactive"):
        balancer.pool()

    after = _client(etcd_server).get(balancer.key, metadata=True)[0][1]["mod_revision"]
    assert after == before


def test_missing_key_names_the_key(etcd_server: EtcdServer) -> None:
    balancer = _balancer(etcd_server, pooled=None)
    with pytest.raises(LoadBalancerError, match=f"key {balancer.key} not found"):
        balancer.state()
    with pytest.raises(LoadBalancerError, match="not found"):
        balancer.depool()
    assert _client(etcd_server).get(balancer.key) == []


@pytest.mark.parametrize(("raw", "message"), [
    ("not json", "is not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"weight": 1}', "pooled=None; expected yes, no or inactive"),
    ('{"pooled": "maybe"}', "pooled='maybe'"),
])
def test_invalid_value_is_clear(etcd_server: EtcdServer, raw: str, message: str) -> None:
    balancer = _balancer(etcd_server, pooled=None)
    _client(etcd_server).put(balancer.key, raw)
    with pytest.raises(LoadBalancerError, match=message):
        balancer.state()


def test_conflict_reads_again(etcd_server: EtcdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    balancer = _balancer(etcd_server)
    real_read = ConftoolLoadBalancer.read
    interfered: list[int] = []

    def read_then_interfere(self: ConftoolLoadBalancer) -> KeyValue:
        current = real_read(self)
        # An operator edits the weight between our read and our write, once.
        if not interfered:
            interfered.append(current.mod_revision)
            _client(etcd_server).put(self.key, json.dumps({"pooled": "yes", "weight": 7}))
        return current

    monkeypatch.setattr(ConftoolLoadBalancer, "read", read_then_interfere)
    balancer.depool()

    assert interfered
    assert _stored(etcd_server, balancer.key) == {"pooled": "no", "weight": 7}


def test_conflict_that_flips_state_is_respected(etcd_server: EtcdServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    balancer = _balancer(etcd_server)
    real_read = ConftoolLoadBalancer.read
    calls: list[int] = []

    def read_then_inactivate(self: ConftoolLoadBalancer) -> KeyValue:
        current = real_read(self)
        if not calls:
            _client(etcd_server).put(self.key, json.dumps({"pooled": "inactive", "weight": 10}))
        calls.append(current.mod_revision)
        return current

    monkeypatch.setattr(ConftoolLoadBalancer, "read", read_then_inactivate)
    with pytest.raises(LoadBalancerError, match="pooled=inactive"):
        balancer.depool()
    assert _stored(etcd_server, balancer.key)["pooled"] == "inactive"
    assert len(calls) == 2


def test_endless_conflict_gives_up(etcd_server: EtcdServer,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    balancer = _balancer(etcd_server)
    real_read = ConftoolLoadBalancer.read
    weights = itertools.count(20)

    def read_then_interfere(self: ConftoolLoadBalancer) -> KeyValue:
        current = real_read(self)
        _client(etcd_server).put(self.key, json.dumps({"pooled": "yes",
                                                       "weight": next(weights)}))
        return current

    monkeypatch.setattr(ConftoolLoadBalancer, "read", read_then_interfere)
    with pytest.raises(LoadBalancerError, match=f"under every one of {conftool.MAX_ATTEMPTS}"):
        balancer.depool()
    assert _stored(etcd_server, balancer.key)["pooled"] == "yes"


def test_dry_run_changes_nothing(etcd_server: EtcdServer,
                                 caplog: pytest.LogCaptureFixture) -> None:
    balancer = _balancer(etcd_server, dry_run=True)
    with caplog.at_level(logging.INFO, logger="opcache_guard.lb.conftool"):
        balancer.depool()
    assert balancer.state() is LbState.POOLED
    assert "would set" in caplog.text


def test_second_endpoint_is_tried(etcd_server: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{procs.free_port()}"
    balancer = _balancer(etcd_server, endpoints=[dead, etcd_server.url])
    balancer.depool()
    assert balancer.state() is LbState.DEPOOLED


def test_unreachable_etcd_is_clear() -> None:
    dead = f"http://127.0.0.1:{procs.free_port()}"
    balancer = base.create("app1", {"backend": "conftool", "endpoints": [dead],
                                    "datacenter": "dc1", "cluster": "c", "service": "s",
                                    "timeout": 1.0})
    with pytest.raises(LoadBalancerError, match=f"no etcd endpoint responded.*{dead}"):
        balancer.state()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"datacenter": None}, "datacenter is missing"),
    ({"service": "a/b"}, "contains '/'"),
    ({"endpoints": "127.0.0.1:2379"}, "not an etcd URL"),
    ({"endpoints": []}, "non-empty list"),
    ({"timeout": 0}, "positive number"),
    ({"weight": 3}, "weight: unknown key"),
])
def test_config_errors(overrides: dict[str, Any], message: str) -> None:
    section = {"backend": "conftool", "datacenter": "dc1", "cluster": "c", "service": "s"}
    section.update(overrides)
    section = {key: value for key, value in section.items() if value is not None}
    with pytest.raises(ConfigError, match=message):
        base.create("app1", section)
