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
import re
from pathlib import Path
from typing import Any

import click
import tomli_w
from rich.console import Console
from rich.table import Table

from opcache_guard import phpfiles, procs
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


def lab_directory(given: Path | None) -> Path:
    """Return the lab directory to use: the given one made absolute, or the default.

    Raises:
        LabError: the path has characters that php-fpm or HAProxy configuration cannot hold.
    """
    directory = given.absolute() if given else default_lab_dir()
    if not re.fullmatch(r"[A-Za-z0-9._/-]+", str(directory)):
        raise LabError(f"lab directory {str(directory)!r} has characters other than letters, "
                       "digits and . _ - /; php-fpm and HAProxy configuration cannot hold "
                       "them. Choose another --dir")
    return directory


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
    """The record of the processes ``lab up`` started, as stored in lab.json."""

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
    app = directory / APP_DIR
    app.mkdir(mode=0o755, exist_ok=True)
    for name, source in APP_FILES.items():
        phpfiles.write_php(app / name, source, os.path.getmtime(directory) - 60)
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
    if not 1 <= max_children <= 64:
        raise LabError(f"--children {max_children} is outside 1-64")
    existing = LabRecord.load(directory)
    if existing and running_parts(existing):
        raise LabError(f"a lab already runs in {directory} ({', '.join(running_parts(existing))}); "
                       f"run 'opcache-guard lab down --dir {directory}' first")
    opcache.validate()
    local.MasterSpec("check", directory, "127.0.0.1:1").command()
    phpfiles.prepare_directory(directory, "lab directory", LabError)
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


def running_parts(record: LabRecord) -> list[str]:
    """Name the processes of a lab record that still run."""
    parts = []
    for master in record.masters:
        pid = procs.read_pid(master.spec().pid_file) or master.pid
        if procs.is_alive(pid) or procs.group_members(pid, "php-fpm"):
            parts.append(f"php-fpm {master.name}")
    haproxy = record.haproxy()
    if haproxy is not None and procs.is_alive(haproxy.pid):
        parts.append("HAProxy")
    slot_server = record.extra.get("slots", {})
    if slot_server.get("pid") and procs.is_alive(slot_server["pid"]):
        parts.append(slot_server["section"]["backend"])
    return parts


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
        # Masters run in their own session, so the group id is the master's pid. Workers of
        # a master that died keep serving until they are stopped too.
        for group in {pid, master.pid}:
            for worker in procs.stop_group(group, "php-fpm"):
                stopped.append(f"php-fpm worker of {master.name} (pid {worker})")
    (directory / RECORD).unlink(missing_ok=True)
    return stopped


dir_option = click.option(
    "--dir", "directory", type=click.Path(path_type=Path), default=None,
    help="Lab directory (default: /var/lib/opcache-guard/lab as root, "
         "~/.local/state/opcache-guard/lab otherwise). Only letters, digits and . _ - / "
         "are accepted, because the path goes into php-fpm and HAProxy configuration.")


@click.group("lab")
def lab_group() -> None:
    """Run a local fleet of real php-fpm masters on loopback."""


@lab_group.command("up")
@dir_option
@click.option("--pools", default=2, show_default=True, type=click.IntRange(1, MAX_POOLS),
              help="Masters (simulated hosts) to start.")
@click.option("--memory", default=8, show_default=True, type=click.IntRange(8, 1024),
              help="opcache.memory_consumption in MB.")
@click.option("--max-files", default=2000, show_default=True, type=click.IntRange(200, 100000),
              help="opcache.max_accelerated_files.")
@click.option("--max-wasted", default=5, show_default=True, type=click.IntRange(1, 50),
              help="opcache.max_wasted_percentage.")
@click.option("--children", default=4, show_default=True, type=click.IntRange(1, 64),
              help="pm.max_children of each pool.")
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
    directory = lab_directory(directory)
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
    directory = lab_directory(directory)
    record = LabRecord.load(directory)
    if record is None:
        raise LabError(f"no lab in {directory}; start one with "
                       f"'opcache-guard lab up --dir {directory}'")
    down = []
    table = Table(title=f"lab in {directory}", title_justify="left")
    for heading in ("master", "pid", "running", "ping", "listen", "status_listen"):
        table.add_column(heading)
    for master in record.masters:
        pid = procs.read_pid(master.spec().pid_file) or master.pid
        running = procs.is_alive(pid)
        answered = running and local.ping(master.listen)
        if not answered:
            down.append(master.name)
        table.add_row(master.name, str(pid), "yes" if running else "no",
                      "pong" if answered else "-", master.listen, master.status_listen)
    Console().print(table)
    haproxy = record.haproxy()
    if haproxy is not None and not _print_haproxy(haproxy):
        down.append("HAProxy")
    click.echo(f"configuration: {record.config_path}")
    if down:
        raise LabError(f"part of the lab is down: {', '.join(down)}; run 'opcache-guard lab "
                       f"down --dir {directory}' and start it again")


def _print_haproxy(haproxy: HaproxyServer) -> bool:
    """Print HAProxy's servers and return whether HAProxy runs and responds."""
    running = procs.is_alive(haproxy.pid)
    click.echo(f"HAProxy pid {haproxy.pid} ({'running' if running else 'not running'}) on "
               f"{haproxy.url}")
    if not running:
        return False
    try:
        rows = haproxy.api().show_stat(haproxy.backend)
    except GuardError as exc:
        click.echo(f"  cannot read HAProxy state: {exc}")
        return False
    for row in rows:
        if row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        click.echo(f"  server {row.get('svname')}: {row.get('status')}, "
                   f"{row.get('scur')} in flight, {row.get('stot')} served")
    return True


@lab_group.command("down")
@dir_option
@guarded()
def down_command(directory: Path | None) -> None:
    """Stop only the processes the lab started."""
    directory = lab_directory(directory)
    stopped = lab_down(directory)
    if not stopped:
        click.echo(f"nothing to stop in {directory}")
    for line in stopped:
        click.echo(f"stopped {line}")
