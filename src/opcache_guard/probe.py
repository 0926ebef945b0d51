"""Read one pool's OPcache and FPM state over FastCGI, returning a Sample.

OPcache can only be read from inside the pool, so the probe runs a small PHP status script
there. By default the script is written for each call with ``O_EXCL`` and a random name into
a private directory (readable by the pool's workers, writable only by us) and removed
afterwards. OPcache's ``file_update_protection`` keeps such a fresh file out of the cache, so
probing never fills the cache it measures. Pools that cannot reach that directory
(``open_basedir``, chroot, PrivateTmp) use an installed script at a fixed path instead.

When the pool sets ``pm.status_listen``, both the status page and the script go to that
address: its workers belong to the same master and share the same OPcache, so the reading
stays available while every worker of the main pool is busy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from opcache_guard import phpfiles
from opcache_guard.config import PoolConfig, ProbeSettings
from opcache_guard.errors import ConfigError, ConnectError, FastCGITimeout, ProbeError
from opcache_guard.fastcgi import FastCGIClient, Response
from opcache_guard.sample import FpmState, Sample, parse_fpm, parse_opcache

SCRIPT_PREFIX = "opcache-guard-"
# A status script older than this belongs to a probe that was killed before its cleanup.
STALE_SCRIPT_SECONDS = 600
log = logging.getLogger(__name__)


def status_script_source() -> bytes:
    """Return the PHP status script shipped with the package."""
    return resources.files("opcache_guard").joinpath("php/status.php").read_bytes()


def prepare_script_dir(directory: Path) -> None:
    """Create the private script directory, or check that an existing one is private.

    Stale scripts left by a probe that was killed are removed, so none stays callable.

    Raises:
        ConfigError: the directory or a parent is not trusted, or workers cannot read it.
    """
    phpfiles.prepare_directory(directory, "probe script directory")
    cutoff = time.time() - STALE_SCRIPT_SECONDS
    for stale in directory.glob(f"{SCRIPT_PREFIX}*.php"):
        with contextlib.suppress(OSError):
            if stale.lstat().st_mtime < cutoff:
                stale.unlink()


@contextlib.contextmanager
def status_script(pool: PoolConfig, settings: ProbeSettings) -> Iterator[str]:
    """Provide the status script and yield its path as the pool's workers see it."""
    if pool.script_path:
        yield _inside_chroot(pool.script_path, pool.chroot)
        return
    directory = settings.script_dir
    prepare_script_dir(directory)
    path = directory / f"{SCRIPT_PREFIX}{secrets.token_hex(12)}.php"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(status_script_source())
        os.chmod(path, 0o644)
        yield _inside_chroot(str(path), pool.chroot)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _inside_chroot(path: str, chroot: str) -> str:
    if not chroot:
        return path
    root = chroot.rstrip("/")
    if not path.startswith(root + "/"):
        raise ConfigError(f"status script {path} is outside the pool's chroot {chroot}; "
                          "place it inside the chroot")
    return path[len(root):]


class Prober:
    """Probes pools with shared timeouts and script settings."""

    def __init__(self, settings: ProbeSettings) -> None:
        self.settings = settings

    def _client(self, pool: PoolConfig) -> FastCGIClient:
        return FastCGIClient(pool.status_listen or pool.address,
                             connect_timeout=self.settings.connect_timeout,
                             read_timeout=self.settings.read_timeout)

    def _get(self, pool: PoolConfig, script_filename: str, script_name: str,
             query: str = "") -> Response:
        """Send one GET, retrying once on a 5xx (FPM's status page rarely fails to lock)."""
        with self._client(pool) as client:
            for attempt in (1, 2):
                try:
                    reply = client.get(script_filename, script_name, query)
                except ConnectError as exc:
                    # A reset means a worker died mid-request, because it crashed or was
                    # recycled. Another worker may well reply.
                    if attempt == 1 and "reset" in str(exc).lower():
                        log.warning("retrying the probe of %s: %s", pool.location, exc)
                        continue
                    raise ProbeError(f"{pool.location}: unreachable ({exc.reason}); check "
                                     "that php-fpm runs and listens there") from exc
                except FastCGITimeout as exc:
                    raise ProbeError(self._timeout_message(pool)) from exc
                if reply.status < 500 or attempt == 2:
                    return reply
        raise ProbeError(f"{pool.location}: the connection was reset twice; see the "
                         "pool's log for crashed workers")

    def _timeout_message(self, pool: PoolConfig) -> str:
        waited = f"no reply within {self.settings.read_timeout:g} s"
        if pool.status_listen:
            return f"{pool.location}: {waited}; the master looks hung"
        return (f"{pool.location}: {waited}: the pool is saturated (every worker busy) or "
                "hung; set pm.status_listen in the pool and status_listen in the "
                "configuration so status stays readable under load")

    def ping(self, pool: PoolConfig) -> bool:
        """Return whether the pool answers its ping path with the expected text."""
        try:
            reply = self._get(pool, pool.ping_path, pool.ping_path)
        except ProbeError:
            return False
        return reply.status == 200 and reply.body.strip() == pool.ping_response.encode()

    def status_page(self, pool: PoolConfig) -> FpmState:
        """Read the FPM status page (``json``).

        Raises:
            ProbeError: the page is not configured, or the reply is not JSON.
        """
        reply = self._get(pool, pool.status_path, pool.status_path, "json")
        if reply.status in (403, 404):
            raise ProbeError(f"{pool.location}: status page {pool.status_path} not found "
                             f"(FPM answered {reply.status} {_body_hint(reply)}); set "
                             f"pm.status_path = {pool.status_path} in the pool")
        data = _decode_json(reply, f"{pool.location}: status page {pool.status_path}")
        return parse_fpm(data)

    def probe(self, pool: PoolConfig) -> Sample:
        """Take one reading of a pool.

        Raises:
            ProbeError: naming the pool, the cause and the fix.
            ConfigError: the script directory is unsafe.
        """
        started = time.monotonic()
        use_function = pool.fpm_status == "function" and not pool.status_listen
        with status_script(pool, self.settings) as script_filename:
            reply = self._get(pool, script_filename, "/" + os.path.basename(script_filename),
                              "fpm=1" if use_function else "")
        data = self._check_script_reply(pool, reply, script_filename)
        opcache = parse_opcache(data["status"], data.get("configuration") or {})
        try:
            taken_at = float(data["time"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProbeError(f"{pool.location}: unexpected reply layout: 'time' is missing or "
                             "not a number; is the status script opcache-guard's own?") from exc
        if not use_function or not isinstance(data.get("fpm"), dict):
            # On the status_listen address fpm_get_status() would describe the hidden status
            # pool, not the pool we watch, so that case reads the status page too.
            fpm: FpmState | None = self.status_page(pool)
        else:
            fpm = parse_fpm(data["fpm"])
        notes = []
        if not pool.script_path and opcache.file_update_protection == 0:
            notes.append("opcache.file_update_protection is 0, so every probe caches its "
                         "status script and fills the cache a little; install the status "
                         "script and set script_path, or set file_update_protection to 2")
        return Sample(pool=pool.name, address=str(pool.address), time=taken_at,
                      duration=time.monotonic() - started,
                      php_version=str(data.get("php_version", "")), opcache=opcache, fpm=fpm,
                      notes=notes)

    def _check_script_reply(self, pool: PoolConfig, reply: Response,
                            script_filename: str) -> dict[str, Any]:
        where = pool.location
        if reply.status == 404:
            fix = ("set [probe] script_dir to a directory the pool can read, or install "
                   "the script and set script_path" if not pool.script_path else
                   "check script_path and chroot")
            raise ProbeError(f"{where}: status script {script_filename} not found by the pool "
                             f"(open_basedir, chroot or PrivateTmp?); {fix}")
        if reply.status == 403:
            raise ProbeError(f"{where}: access to the status script was denied; allow .php in "
                             "security.limit_extensions")
        data = _decode_json(reply, f"{where}: status script")
        if not data.get("opcache_loaded"):
            raise ProbeError(f"{where}: OPcache is not loaded; add zend_extension=opcache.so "
                             "to the pool's php.ini")
        if not isinstance(data.get("status"), dict):
            detail = data.get("status_error") or "opcache_get_status() returned false"
            raise ProbeError(f"{where}: OPcache is disabled or restricted ({detail}); set "
                             "opcache.enable=1, and allow the script in opcache.restrict_api")
        return data


def _body_hint(reply: Response) -> str:
    text = (reply.body or reply.stderr).decode(errors="replace").strip()
    return repr(text[:60]) if text else ""


def _decode_json(reply: Response, what: str) -> dict[str, Any]:
    try:
        data = json.loads(reply.body)
    except ValueError:
        text = (reply.body or reply.stderr).decode(errors="replace").strip().replace("\n", " ")
        raise ProbeError(f"{what} returned HTTP {reply.status} with PHP output instead of JSON: "
                         f"{text[:200]!r}") from None
    if not isinstance(data, dict):
        raise ProbeError(f"{what} returned JSON that is not an object")
    return data
