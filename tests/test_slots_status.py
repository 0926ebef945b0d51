import json
import time

from click.testing import CliRunner

from opcache_guard.cli import main
from opcache_guard.slots import create
from opcache_guard.slots.base import GroupPolicy, GroupStatus, Holder
from opcache_guard.slots.render import format_age, status_dict, status_table


def write_config(tmp_path):
    path = tmp_path / "guard.toml"
    path.write_text(f"""
state_file = "{tmp_path / 'state.db'}"

[slots.groups.web]
limit = "50%"
size = 4

[slots.groups.db]
limit = 1
""")
    return path


def test_status_json_lists_holders(tmp_path):
    config = write_config(tmp_path)
    backend = create({"path": str(tmp_path / "state.db"),
                      "groups": {"web": {"limit": "50%", "size": 4}}})
    assert backend.acquire("web", "app1", "restart", 0) is not None
    result = CliRunner().invoke(main, ["slots", "status", "-c", str(config), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["backend"] == "sqlite"
    groups = {group["name"]: group for group in report["groups"]}
    assert groups["web"]["max_out"] == 2
    assert [h["host"] for h in groups["web"]["holders"]] == ["app1"]
    assert groups["web"]["holders"][0]["reason"] == "restart"
    assert groups["db"]["holders"] == []


def test_status_table_shows_groups(tmp_path):
    config = write_config(tmp_path)
    result = CliRunner().invoke(main, ["slots", "status", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "web" in result.output
    assert "50% of 4" in result.output


def test_status_without_groups_fails_cleanly(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("")
    result = CliRunner().invoke(main, ["slots", "status", "-c", str(path)])
    assert result.exit_code == 2
    assert "no slot groups configured" in result.output
    assert "Traceback" not in result.output


def test_status_rejects_unknown_backend(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[slots]\nbackend = "zookeeper"\n[slots.groups.web]\nlimit = 1\n')
    result = CliRunner().invoke(main, ["slots", "status", "-c", str(path)])
    assert result.exit_code == 2
    assert "use one of: etcd, memory, poolcounter, sqlite" in result.output


def test_render_marks_partial_holders():
    policy = GroupPolicy("web", "2")
    holder = Holder("web", "app1", "h:1:a", "deploy", time.time() - 75)
    groups = [GroupStatus(policy, 2, [holder], holders_complete=False)]
    table = status_table(groups, "poolcounter")
    assert table.caption is not None and "only the slots held by this process" in table.caption
    assert status_dict(groups, "poolcounter")["groups"][0]["holders_complete"] is False


def test_format_age():
    assert format_age(5) == "5s"
    assert format_age(75) == "1m 15s"
    assert format_age(7500) == "2h 5m"
