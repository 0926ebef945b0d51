"""Run one stress session: deploys, load, storms and sampling side by side.

Every background activity is a thread that stops on one shared event. The load runs in the
calling thread and bounds the session in time and count. A failed deploy stops the session
and is raised once everything has stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from opcache_guard import procs
from opcache_guard.config import ProbeSettings
from opcache_guard.errors import FastCGIError, GuardError, ProbeError, StressError
from opcache_guard.fastcgi import FastCGIClient
from opcache_guard.fpm import local
from opcache_guard.probe import Prober
from opcache_guard.sample import Sample
from opcache_guard.stress.deploy import Deployer
from opcache_guard.stress.detect import Detector, LogWatcher, ReloadWindows
from opcache_guard.stress.load import LoadSettings, LoadTarget, run_load
from opcache_guard.stress.target import Target

log = logging.getLogger(__name__)

RESTART_KINDS = ("oom_restarts", "hash_restarts", "manual_restarts")


@dataclasses.dataclass(frozen=True)
class Storms:
    """Disturbances during the load: deploy pace, OPcache resets and master reloads.

    Arguments:
        round_interval: seconds between deploy rounds.
        reset_rate: opcache_reset() requests per second; 0 for none.
        reload_interval: seconds between USR2 reloads of the master; 0 for none.
        sample_interval: seconds between OPcache samples.
    """

    round_interval: float = 0.2
    reset_rate: float = 0.0
    reload_interval: float = 0.0
    sample_interval: float = 0.2


@dataclasses.dataclass
class Timeline:
    """OPcache samples over a run, with restarts counted across master reloads."""

    points: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    restarts: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(RESTART_KINDS, 0))
    probe_errors: int = 0
    _previous: Sample | None = None

    def add(self, moment: float, sample: Sample) -> None:
        """Append one sample taken moment seconds into the run."""
        opcache = sample.opcache
        previous = self._previous.opcache if self._previous is not None else None
        for kind in RESTART_KINDS:
            value = getattr(opcache, kind)
            if previous is None:
                continue
            before = getattr(previous, kind)
            # A reload starts a new OPcache whose counters begin at zero again.
            self.restarts[kind] += value - before if value >= before else value
        self._previous = sample
        self.points.append({
            "t": round(moment, 3),
            "used_memory": opcache.used_memory,
            "free_memory": opcache.free_memory,
            "wasted_memory": opcache.wasted_memory,
            "wasted_percentage": round(opcache.current_wasted_percentage, 2),
            "num_cached_scripts": opcache.num_cached_scripts,
            "num_cached_keys": opcache.num_cached_keys,
            "max_cached_keys": opcache.max_cached_keys,
            "interned_strings_used_memory": opcache.interned_strings_used_memory,
            "cache_full": opcache.cache_full,
            "restarts": sum(self.restarts.values()),
        })


@dataclasses.dataclass
class RunResult:
    """Everything a report needs about one session."""

    elapsed: float
    rounds: int
    resets: int
    reloads: int
    detector: Detector
    timeline: Timeline


def _loop(stop: threading.Event, interval: float, step: Callable[[], None]) -> None:
    next_time = time.monotonic()
    while not stop.is_set():
        step()
        next_time += interval
        stop.wait(max(0.0, next_time - time.monotonic()))


class StressRun:
    """One session against one target.

    Arguments:
        target: the pool.
        deployer: writes the rounds; setup() must have been called and round 0 deployed.
        load: the load's bounds and client.
        storms: deploy pace, resets and reloads.
        probe: probe settings, whose script directory the pool's workers can read.
    """

    def __init__(self, target: Target, deployer: Deployer, load: LoadSettings, storms: Storms,
                 probe: ProbeSettings) -> None:
        self.target = target
        self.deployer = deployer
        self.load = load
        self.storms = storms
        self.prober = Prober(probe)
        self.started = time.monotonic()
        self.reload_windows = ReloadWindows()
        self.detector = Detector(self.started, self.reload_windows)
        self.timeline = Timeline()
        self.stop = threading.Event()
        self.error: GuardError | None = None
        self.rounds = 1
        self.resets = 0
        self._log_watcher = LogWatcher(target.log_file)

    def run(self) -> RunResult:
        """Run the session until the load's bounds are reached.

        Raises:
            StressError: a deploy failed, or the pool could not be probed at the start.
        """
        self._sample()
        if self.detector.latest is None:
            raise StressError(f"cannot probe {self.target.pool.name} at "
                              f"{self.target.pool.address} before the run; check that the "
                              "pool runs and can read the probe script directory")
        threads = [
            self._thread("deploy", self.storms.round_interval, self._deploy_round),
            self._thread("sample", self.storms.sample_interval, self._sample),
        ]
        if self.storms.reset_rate > 0:
            threads.append(self._thread("reset", 1.0 / self.storms.reset_rate, self._reset))
        if self.storms.reload_interval > 0:
            threads.append(self._thread("reload", self.storms.reload_interval, self._reload))
        for thread in threads:
            thread.start()

        entry = self.deployer.entry_path
        load_target = LoadTarget(
            address=self.target.pool.address, script_filename=str(entry),
            script_name="/" + entry.relative_to(self.target.docroot).as_posix(),
            current_round=lambda: self.deployer.current_round,
            on_reply=self.detector.check_reply, on_error=self.detector.check_error)
        elapsed = run_load(load_target, self.load, self.stop)

        self.stop.set()
        for thread in threads:
            thread.join()
        self._sample()
        if self.error is not None:
            raise self.error
        return RunResult(elapsed, self.rounds, self.resets, len(self.reload_windows),
                         self.detector, self.timeline)

    def _thread(self, name: str, interval: float, step: Callable[[], None]) -> threading.Thread:
        return threading.Thread(target=_loop, args=(self.stop, interval, step),
                                name=f"stress-{name}", daemon=True)

    def _deploy_round(self) -> None:
        try:
            info = self.deployer.deploy()
        except GuardError as exc:
            log.error("stopping the run: deploy of round %d failed: %s",
                      self.deployer.current_round + 1, exc)
            self.error = exc
            self.stop.set()
            return
        self.rounds += 1
        log.debug("deployed round %d: %d rewritten, %d added, %d removed, %d live", info.round,
                  len(info.written), len(info.added), len(info.removed), info.live)

    def _sample(self) -> None:
        self._log_watcher.poll(self.detector)
        try:
            sample = self.prober.probe(self.target.pool)
        except (ProbeError, FastCGIError) as exc:
            self.timeline.probe_errors += 1
            log.debug("failed to probe %s: %s", self.target.pool.name, exc)
            return
        self.detector.latest = sample
        self.timeline.add(time.monotonic() - self.started, sample)

    def _reset(self) -> None:
        reset = self.deployer.reset_path
        client = FastCGIClient(self.target.pool.address, connect_timeout=2.0, read_timeout=5.0)
        try:
            client.get(str(reset), "/" + reset.relative_to(self.target.docroot).as_posix())
        except FastCGIError as exc:
            log.debug("failed to request opcache_reset() from %s: %s", self.target.pool.name, exc)
            return
        self.resets += 1

    def _reload(self) -> None:
        sent = time.monotonic()
        try:
            self.target.reload()
        except StressError as exc:
            log.error("stopping reloads of %s: %s", self.target.pool.name, exc)
            self.error = exc
            self.stop.set()
            return
        address = self.target.pool.address
        # The old master keeps serving until its workers finish, so wait past the re-exec.
        self.stop.wait(0.1)
        procs.wait_until(lambda: local.ping(address, 0.5), 10.0, 0.01)
        # Connections accepted just before the re-exec can fail shortly after the ping succeeds.
        self.reload_windows.add(sent, time.monotonic() + 0.5)
        log.info("reloaded the master of %s (pid %s)", self.target.pool.name,
                 self.target.master_pid)

