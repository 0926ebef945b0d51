"""The agent: check the host's pools periodically and restart the host safely when due.

Each cycle first repairs restart runs a crash left unfinished, then probes every pool,
judges it against its previous sample, and restarts the host through ``SafeRestart`` when a
verdict says a restart is due and a slot comes free within ``[agent] slot_timeout``.
Otherwise it tries again at the next cycle. Every cycle logs one INFO line that says what
it decided and why. Its counters live in the state store, so ``agent_collector`` can
publish them from the exporter process.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from opcache_guard.errors import GuardError, ProbeError, StateError
from opcache_guard.health import Status, Verdict, judge, unknown
from opcache_guard.restart import Backends, HostConfig, SafeRestart, State, repair
from opcache_guard.restart.journal import unresolved_runs
from opcache_guard.store import StateStore

log = logging.getLogger("opcache_guard.agent")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agent_state (
    host TEXT PRIMARY KEY,
    cycles INTEGER NOT NULL DEFAULT 0,
    restarts_done INTEGER NOT NULL DEFAULT 0,
    restarts_failed INTEGER NOT NULL DEFAULT 0,
    slot_waits INTEGER NOT NULL DEFAULT 0,
    cycle_errors INTEGER NOT NULL DEFAULT 0,
    last_action TEXT NOT NULL DEFAULT '',
    last_decision TEXT NOT NULL DEFAULT '',
    last_cycle REAL NOT NULL DEFAULT 0
);
"""
ACTIONS = ("none", "restart", "restart_failed", "wait", "hold", "report", "error")
_COUNTED = {"restart": "restarts_done", "restart_failed": "restarts_failed",
            "wait": "slot_waits", "error": "cycle_errors"}


@dataclasses.dataclass
class Decision:
    """The decision of one cycle: an action among ACTIONS and the sentence that explains it."""

    action: str
    message: str


class Agent:
    """The check-and-restart loop of one host."""

    def __init__(self, host: HostConfig, backends: Backends, dry_run: bool = False) -> None:
        self.host = host
        self.backends = backends
        self.dry_run = dry_run
        self._failures_in_a_row = 0

    def cycle(self) -> Decision:
        """Run one cycle, record it and log its one INFO line; return the decision."""
        try:
            decision = self._decide()
            self._failures_in_a_row = 0
        except GuardError as exc:
            self._failures_in_a_row += 1
            decision = Decision("error", f"failed the check of {self.host.name}: {exc}")
            log.warning("%s", decision.message, exc_info=self._failures_in_a_row == 1)
        if decision.action != "error":
            log.info("%s", decision.message)
        if not self.dry_run:
            record_cycle(self.backends.store, self.host.name, decision)
        return decision

    def _decide(self) -> Decision:
        repair(self.host, self.backends, dry_run=self.dry_run,
               slot_timeout=self.host.agent.slot_timeout)
        held = unresolved_runs(self.backends.store, self.host.name)
        if held:
            return Decision("hold", f"holding {self.host.name} out of restarts: "
                            f"{held[0].describe()}; fix it, then run opcache-guard pool")
        verdicts = self._judge_pools()
        due = [verdict for verdict in verdicts if verdict.restart_due]
        if not due:
            return Decision("none", _no_action(self.host.name, verdicts))
        reason = "; ".join(f"{verdict.pool}: {verdict.summary}" for verdict in due)
        where = f"{self.host.name}/{','.join(verdict.pool for verdict in due)}"
        if not self.host.agent.restart:
            return Decision("report", f"reporting {where} only ([agent] restart = false): "
                            f"{reason}")
        log.info("restarting %s: %s", where, reason)
        outcome = SafeRestart(self.host, self.backends, dry_run=self.dry_run, reason=reason,
                              slot_timeout=self.host.agent.slot_timeout).run()
        if outcome.state == State.SKIPPED:
            return Decision("wait", f"{outcome.message} (restart due on {where})")
        if outcome.state in (State.DONE,) or self.dry_run:
            return Decision("restart", f"restarted {where}: {reason}")
        return Decision("restart_failed", f"failed to restart {where}: {outcome.message}")

    def _judge_pools(self) -> list[Verdict]:
        verdicts = []
        store = self.backends.store
        for pool in self.host.base.pools:
            try:
                sample = self.backends.prober.probe(pool)
            except ProbeError as exc:
                verdicts.append(unknown(pool.name, str(exc)))
                continue
            verdicts.append(judge(sample, store.previous_sample(pool.key),
                                  self.host.base.thresholds))
            if not self.dry_run:
                store.save_sample(pool.key, sample)
        return verdicts

    def run_forever(self, stop: threading.Event, interval: float | None = None) -> None:
        """Run cycles until stop is set, sleeping interval plus random jitter between them.

        The first cycle also waits a random part of the jitter, so agents started together
        by a fleet-wide deploy do not check and restart in step.
        """
        interval = self.host.agent.interval if interval is None else interval
        jitter = min(self.host.agent.jitter, interval / 2)
        log.info("starting the agent of %s: every %g s, jitter %g s", self.host.name, interval,
                 jitter)
        stop.wait(random.uniform(0, jitter))
        while not stop.is_set():
            self.cycle()
            stop.wait(max(interval + random.uniform(-jitter, jitter), 0.1))
        log.info("stopped the agent of %s", self.host.name)


def _no_action(host: str, verdicts: list[Verdict]) -> str:
    problems = [f"{v.pool} {v.status.name}: {v.summary}" for v in verdicts
                if v.status != Status.OK]
    if not problems:
        return f"no action on {host}: {len(verdicts)} pools healthy"
    return f"no action on {host}: no restart due; {'; '.join(problems)}"


def _execute(store: StateStore, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    try:
        with store.connect() as conn:
            conn.executescript(_SCHEMA)
            return conn.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        raise StateError(f"agent state in {store.path}: {exc}") from exc


def record_cycle(store: StateStore, host: str, decision: Decision) -> None:
    """Add one cycle and its decision to the host's agent counters."""
    counter = _COUNTED.get(decision.action)
    bump = f", {counter} = {counter} + 1" if counter else ""
    _execute(store, "INSERT INTO agent_state (host) VALUES (?) ON CONFLICT(host) DO NOTHING",
             (host,))
    _execute(store, f"UPDATE agent_state SET cycles = cycles + 1{bump}, last_action = ?, "
             "last_decision = ?, last_cycle = ? WHERE host = ?",
             (decision.action, decision.message, time.time(), host))


def agent_state(store: StateStore) -> list[dict[str, Any]]:
    """Return every host's agent counters and last decision."""
    columns = ("host", "cycles", "restarts_done", "restarts_failed", "slot_waits",
               "cycle_errors", "last_action", "last_decision", "last_cycle")
    rows = _execute(store, f"SELECT {', '.join(columns)} FROM agent_state ORDER BY host")
    return [dict(zip(columns, row, strict=True)) for row in rows]


class AgentCollector(Collector):
    """Publishes the agent's counters and the unresolved restart runs from the state store."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        cycles = CounterMetricFamily("opcache_guard_agent_cycles", "Agent check cycles run",
                                     labels=["host"])
        restarts = CounterMetricFamily("opcache_guard_agent_restarts",
                                       "Safe restarts the agent started, by result",
                                       labels=["host", "result"])
        waits = CounterMetricFamily("opcache_guard_agent_slot_waits",
                                    "Cycles that found a restart due but no free slot",
                                    labels=["host"])
        errors = CounterMetricFamily("opcache_guard_agent_cycle_errors",
                                     "Cycles that failed with an error", labels=["host"])
        last = GaugeMetricFamily("opcache_guard_agent_last_cycle_timestamp_seconds",
                                 "Unix time of the agent's last cycle", labels=["host"])
        action = GaugeMetricFamily("opcache_guard_agent_last_action",
                                   "1 for the action the agent's last cycle took",
                                   labels=["host", "action"])

        rows = agent_state(self.store)
        for row in rows:
            host = row["host"]
            cycles.add_metric([host], row["cycles"])
            restarts.add_metric([host, "done"], row["restarts_done"])
            restarts.add_metric([host, "failed"], row["restarts_failed"])
            waits.add_metric([host], row["slot_waits"])
            errors.add_metric([host], row["cycle_errors"])
            last.add_metric([host], row["last_cycle"])
            for name in ACTIONS:
                action.add_metric([host, name], 1.0 if row["last_action"] == name else 0.0)

        unresolved = GaugeMetricFamily("opcache_guard_restart_runs_unresolved",
                                       "Restart runs FAILED or left unfinished",
                                       labels=["host"])
        # Every host the agent has run for gets a sample, 0 included, so alerts on the
        # metric do not depend on its absence.
        counts: dict[str, int] = {row["host"]: 0 for row in rows}
        for run in unresolved_runs(self.store):
            counts[run.host] = counts.get(run.host, 0) + 1
        for host, count in sorted(counts.items()):
            unresolved.add_metric([host], count)

        yield from (cycles, restarts, waits, errors, last, action, unresolved)


def agent_collector(store: StateStore) -> AgentCollector:
    """Return a prometheus_client Collector of the agent state kept in store."""
    return AgentCollector(store)
