"""The lab: a local fleet of real php-fpm masters on loopback, for demos and tests.

``lab up`` starts one master per simulated host (``app1``, ``app2``, ...) from a lab
directory, each with its own docroot, status and ping paths, a small OPcache that fills in
seconds, and ``process_control_timeout`` above zero. It writes ``lab.toml``, a configuration
file every other command accepts, and ``lab.json``, the record of what it started.
``lab down`` stops only the processes that record names, by pid, after checking that each pid
still runs our configuration.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import click
import tomli_w
from rich.console import Console
from rich.table import Table

from opcache_guard import procs
from opcache_guard.cliutil import guarded
from opcache_guard.config import default_state_root
from opcache_guard.errors import GuardError, LabError
from opcache_guard.fpm import local
from opcache_guard.labhosts import GROUP, SLOT_BACKENDS, start_slot_server, write_host_configs
from opcache_guard.servers.haproxy import FcgiServer, HaproxyServer

RECORD = "lab.json"
CONFIG = "lab.toml"
MAX_POOLS = 32
APP_DIR = "www"
# The application every lab host serves through HAProxy: a short request that names the
# pool that ran it, and a slow one for drain tests.
APP_FILES = {
    "index.php": "<?php\nusleep(5000);\necho getenv('OPCACHE_GUARD_POOL'), \"\\n\";\n",
    "slow.php": "<?php\n$ms = min((int)($_GET['ms'] ?? 1000), 30000);\nusleep($ms * 1000);\n"
                "echo getenv('OPCACHE_GUARD_POOL'), \"\\n\";\n",
}


def default_lab_dir() -> Path:
    """Return the default lab directory, under the state root."""
    return default_state_root() / "lab"


@dataclasses.dataclass
class LabMaster:
    """One master the lab started."""

    name: str
    directory: str
    listen: str
    status_listen: str
    pid: int
    opcache: dict[str, Any]
    max_children: int

    def spec(self) -> local.MasterSpec:
        return local.MasterSpec(
            name=self.name, directory=Path(self.directory), listen=self.listen,
            status_listen=self.status_listen, max_children=self.max_children,
            opcache=local.OpcacheSettings(**self.opcache))


@dataclasses.dataclass
class LabRecord:
    """What ``lab up`` started, as stored in lab.json."""

    directory: str
    masters: list[LabMaster]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return Path(self.directory) / CONFIG

    def haproxy(self) -> HaproxyServer | None:
        """Return the lab's HAProxy, as recorded, or None when the lab runs without it."""
        data = self.extra.get("haproxy")
        if not data:
            return None
        servers = [FcgiServer(m.name, m.listen, m.max_children) for m in self.masters]
        return HaproxyServer(directory=Path(data["directory"]), servers=servers,
                             docroot=Path(self.directory) / APP_DIR, port=data["port"],
                             pid=data["pid"])

    def save(self) -> None:
        path = Path(self.directory) / RECORD
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        os.replace(temporary, path)

    @classmethod
    def load(cls, directory: Path) -> LabRecord | None:
        try:
            data = json.loads((directory / RECORD).read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise LabError(f"lab record {directory / RECORD} is damaged ({exc}); stop the "
                           "lab's php-fpm processes by hand and remove the file") from exc
        masters = [LabMaster(**master) for master in data["masters"]]
        return cls(directory=data["directory"], masters=masters, extra=data.get("extra", {}))


def _prepare_directory(directory: Path) -> None:
    """Create the lab directory so php-fpm workers (nobody, when run as root) can read it."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    if os.geteuid() == 0:
        parent = directory.resolve().parent
        while parent != parent.parent:
            if not parent.stat().st_mode & 0o001:
                raise LabError(f"lab directory {directory} is below {parent}, which other users "
                               "cannot enter, so php-fpm workers running as nobody cannot read "
                               "the docroot; choose --dir elsewhere, for example "
                               "/var/lib/opcache-guard/lab")
            parent = parent.parent


def render_config(record: LabRecord, state_file: Path) -> str:
    """Render lab.toml: the pools, a state file and probe directory inside the lab."""
    document: dict[str, Any] = {
        "state_file": str(state_file),
        "probe": {"script_dir": str(Path(record.directory) / "probe"),
                  "connect_timeout": 1.0, "read_timeout": 5.0},
        "pools": {master.name: {"address": master.listen, "status_listen": master.status_listen}
                  for master in record.masters},
    }
    slots = record.extra.get("slots")
    if slots:
        document["slots"] = {**slots["section"], "groups": {GROUP: {"limit": slots["limit"]}}}
    header = "# Written by 'opcache-guard lab up'. Every opcache-guard command accepts it with -c.\n"
    return header + tomli_w.dumps(document)


def _write_app(directory: Path) -> Path:
    """Write the lab application that HAProxy serves from every master."""
    from opcache_guard.labfill import write_php

    app = directory / APP_DIR
    app.mkdir(mode=0o755, exist_ok=True)
    for name, source in APP_FILES.items():
        write_php(app / name, source, os.path.getmtime(directory) - 60)
    return app


def _start_haproxy(record: LabRecord) -> None:
    directory = Path(record.directory)
    servers = [FcgiServer(m.name, m.listen, m.max_children) for m in record.masters]
    haproxy = HaproxyServer(directory=directory / "haproxy", servers=servers,
                            docroot=_write_app(directory))
    haproxy.start()
    record.extra["haproxy"] = {"directory": str(haproxy.directory), "port": haproxy.port,
                               "pid": haproxy.pid, "url": haproxy.url,
                               "admin_socket": str(haproxy.admin_socket)}
    record.save()


def lab_up(directory: Path, pools: int, opcache: local.OpcacheSettings,
           max_children: int = 4, haproxy: bool = True, slots: str = "sqlite",
           limit: int = 1) -> LabRecord:
    """Start the lab's masters and write its configuration.

    Raises:
        LabError: the lab already runs, php-fpm is missing, or a master failed to start.
    """
    if not 1 <= pools <= MAX_POOLS:
        raise LabError(f"--pools {pools} is outside 1-{MAX_POOLS}")
    existing = LabRecord.load(directory)
    if existing and any(procs.is_alive(m.pid) for m in existing.masters):
        raise LabError(f"a lab already runs in {directory}; run 'opcache-guard lab down' first")
    opcache.validate()
    local.MasterSpec("check", directory, "127.0.0.1:1").command()
    _prepare_directory(directory)
    record = LabRecord(directory=str(directory), masters=[])
    try:
        for index in range(1, pools + 1):
            name = f"app{index}"
            spec = local.MasterSpec(
                name=name, directory=directory / name,
                listen=f"127.0.0.1:{procs.free_port()}",
                status_listen=f"127.0.0.1:{procs.free_port()}",
                max_children=max_children, opcache=opcache)
            local.write_files(spec)
            pid = local.start(spec)
            record.masters.append(LabMaster(
                name=name, directory=str(spec.directory), listen=spec.listen,
                status_listen=spec.status_listen, pid=pid,
                opcache=dataclasses.asdict(opcache), max_children=max_children))
            record.save()
        if haproxy:
            _start_haproxy(record)
        record.extra["slots"] = {**start_slot_server(directory, slots), "limit": limit}
        record.save()
        specs = [master.spec() for master in record.masters]
        admin_socket = record.extra.get("haproxy", {}).get("admin_socket")
        write_host_configs(directory, specs, record.extra["slots"]["section"], limit,
                           admin_socket)
    except GuardError:
        lab_down(directory)
        raise
    state_file = directory / "state.db"
    record.config_path.write_text(render_config(record, state_file))
    record.save()
    return record


def lab_down(directory: Path) -> list[str]:
    """Stop every process the lab record names; return what was stopped."""
    record = LabRecord.load(directory)
    if record is None:
        return []
    stopped = []
    haproxy = record.haproxy()
    if haproxy is not None and haproxy.pid:
        pid = haproxy.pid
        haproxy.stop()
        stopped.append(f"HAProxy (pid {pid})")
    slot_server = record.extra.get("slots", {})
    if slot_server.get("pid") and procs.stop(slot_server["pid"], slot_server["marker"]):
        stopped.append(f"{slot_server['section']['backend']} (pid {slot_server['pid']})")
    for master in record.masters:
        spec = master.spec()
        pid = procs.read_pid(spec.pid_file) or master.pid
        if local.stop(spec, pid):
            stopped.append(f"php-fpm master {master.name} (pid {pid})")
    (directory / RECORD).unlink(missing_ok=True)
    return stopped


dir_option = click.option(
    "--dir", "directory", type=click.Path(path_type=Path), default=None,
    help="Lab directory (default: /var/lib/opcache-guard/lab as root, "
         "~/.local/state/opcache-guard/lab otherwise).")


@click.group("lab")
def lab_group() -> None:
    """Run a local fleet of real php-fpm masters on loopback."""


@lab_group.command("up")
@dir_option
@click.option("--pools", default=2, show_default=True, help="Masters (simulated hosts) to start.")
@click.option("--memory", default=8, show_default=True, help="opcache.memory_consumption in MB.")
@click.option("--max-files", default=2000, show_default=True,
              help="opcache.max_accelerated_files.")
@click.option("--max-wasted", default=5, show_default=True,
              help="opcache.max_wasted_percentage.")
@click.option("--children", default=4, show_default=True, help="pm.max_children of each pool.")
@click.option("--haproxy/--no-haproxy", default=True, show_default=True,
              help="Put HAProxy in front of the pools.")
@click.option("--slots", "slots", type=click.Choice(SLOT_BACKENDS), default="sqlite",
              show_default=True, help="Slot backend of the lab's hosts; etcd and poolcounter "
              "start their server in the lab.")
@click.option("--limit", default=1, show_default=True, type=click.IntRange(1),
              help="Hosts of the lab that may be out of service at once.")
@guarded()
def up_command(directory: Path | None, pools: int, memory: int, max_files: int,
               max_wasted: int, children: int, haproxy: bool, slots: str, limit: int) -> None:
    """Start the lab and write lab.toml for the other commands."""
    directory = directory or default_lab_dir()
    opcache = local.OpcacheSettings(memory_consumption=memory, max_accelerated_files=max_files,
                                    max_wasted_percentage=max_wasted)
    record = lab_up(directory, pools, opcache, children, haproxy, slots, limit)
    for master in record.masters:
        click.echo(f"started php-fpm master {master.name} (pid {master.pid}) on {master.listen}, "
                   f"status on {master.status_listen}")
    balancer = record.extra.get("haproxy")
    if balancer:
        click.echo(f"started HAProxy (pid {balancer['pid']}) on {balancer['url']}, admin socket "
                   f"{balancer['admin_socket']}")
    slot_server = record.extra["slots"]
    if slot_server.get("pid"):
        click.echo(f"started {slots} (pid {slot_server['pid']}) for the lab's slots")
    click.echo(f"configuration: {record.config_path}")
    click.echo(f"host configurations: {directory / 'hosts'}/app*.toml")
    click.echo(f"try: opcache-guard status -c {record.config_path}")


@lab_group.command("status")
@dir_option
@guarded()
def status_command(directory: Path | None) -> None:
    """Show what the lab runs."""
    directory = directory or default_lab_dir()
    record = LabRecord.load(directory)
    if record is None:
        raise LabError(f"no lab in {directory}; start one with 'opcache-guard lab up'")
    table = Table(title=f"lab in {directory}", title_justify="left")
    for heading in ("master", "pid", "running", "ping", "listen", "status_listen"):
        table.add_column(heading)
    for master in record.masters:
        pid = procs.read_pid(master.spec().pid_file) or master.pid
        running = procs.is_alive(pid)
        answered = running and local.ping(master.listen)
        table.add_row(master.name, str(pid), "yes" if running else "no",
                      "pong" if answered else "-", master.listen, master.status_listen)
    Console().print(table)
    haproxy = record.haproxy()
    if haproxy is not None:
        _print_haproxy(haproxy)
    click.echo(f"configuration: {record.config_path}")


def _print_haproxy(haproxy: HaproxyServer) -> None:
    running = procs.is_alive(haproxy.pid)
    click.echo(f"HAProxy pid {haproxy.pid} ({'running' if running else 'not running'}) on "
               f"{haproxy.url}")
    if not running:
        return
    try:
        rows = haproxy.api().show_stat(haproxy.backend)
    except GuardError as exc:
        click.echo(f"  cannot read HAProxy state: {exc}")
        return
    for row in rows:
        if row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        click.echo(f"  server {row.get('svname')}: {row.get('status')}, "
                   f"{row.get('scur')} in flight, {row.get('stot')} served")


@lab_group.command("down")
@dir_option
@guarded()
def down_command(directory: Path | None) -> None:
    """Stop only the processes the lab started."""
    directory = directory or default_lab_dir()
    stopped = lab_down(directory)
    if not stopped:
        click.echo(f"nothing to stop in {directory}")
    for line in stopped:
        click.echo(f"stopped {line}")
